"""T5 encoder (Hugging Face `T5EncoderModel`, v1.0 relu and v1.1 gated-gelu) in Flax.

Built from an `EncoderSpec` and loaded with `pretrained.load_params`. The parameter tree
is `embeddings` (the token table), one `layer_{i}` per block (layer_0 also holds the
relative position bias that every layer adds) and `final_layer_norm`.
"""

import math
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dgi_jax.models.bert import pool, self_attention
from dgi_jax.models.pretrained import EncoderSpec
from dgi_jax.models.transformer import append_inputs

# Only matters for parameters not loaded from a checkpoint (roughly HF's T5 init).
INIT = nn.initializers.normal(stddev=0.05)
EMBED_INIT = nn.initializers.normal(stddev=1.0)


def relative_position_bucket(relative_position: jax.Array, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """Bidirectional T5 buckets of `key - query` distances (int array, any shape).

  Half of the buckets per direction; within each half, distances below a quarter of the
  buckets are exact and larger ones logarithmic up to `max_distance`, then clipped. The
  float32 arithmetic follows HF's order so the bucket boundaries agree exactly.
  """
  half = num_buckets // 2
  buckets = (relative_position > 0).astype(jnp.int32) * half
  distance = jnp.abs(relative_position)
  max_exact = half // 2
  # log(0) is never selected (distance 0 is exact); the maximum keeps the unused branch finite.
  scaled = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
            / math.log(max_distance / max_exact) * (half - max_exact))
  large = jnp.minimum(max_exact + scaled.astype(jnp.int32), half - 1)
  return buckets + jnp.where(distance < max_exact, distance, large)


class RMSNorm(nn.Module):
  """T5's LayerNorm: scale only, no mean subtraction or bias; computed in float32."""
  epsilon: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (scale * x).astype(self.dtype)


class T5Layer(nn.Module):
  """Pre-norm block: `x += attn(norm(x))`, `x += ff(norm(x))`; no biases, no 1/sqrt(d)."""
  spec: EncoderSpec
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  has_relative_bias: bool = False
  dot_general: Optional[Callable] = None  # The Dense layers' (`matmul.dense_dot_general`).
  written_attention: bool = False  # `bert.self_attention`'s written_gradient.

  @nn.compact
  def __call__(self, x: jax.Array, position_bias: Optional[jax.Array], key_mask: jax.Array,
               deterministic: bool) -> Tuple[jax.Array, jax.Array]:
    """x [B, L, d], position_bias [1, H, L, L] (None in layer 0), key_mask [B, L]
    -> (x [B, L, d], the position bias for the next layers)."""
    spec = self.spec
    if self.has_relative_bias:
      position_bias = self._relative_bias(x.shape[1])

    def dropout(y):
      return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)

    y = RMSNorm(spec.layer_norm_eps, self.dtype, name="attention_layer_norm")(x)
    y = self_attention(y, key_mask, spec=spec, dtype=self.dtype, deterministic=deterministic,
                       dropout_rate=self.dropout_rate, use_bias=False, scale=1.0,
                       bias=position_bias, dot_general=self.dot_general,
                       written_gradient=self.written_attention)
    x = x + dropout(y)
    y = RMSNorm(spec.layer_norm_eps, self.dtype, name="ff_layer_norm")(x)
    return x + dropout(self._feed_forward(y, dropout)), position_bias

  def _relative_bias(self, length: int) -> jax.Array:
    """The learned bias of each (query, key) distance bucket: [1, H, L, L]."""
    spec = self.spec
    positions = jnp.arange(length)
    buckets = relative_position_bucket(positions[None, :] - positions[:, None],
                                       spec.relative_attention_num_buckets,
                                       spec.relative_attention_max_distance)
    table = nn.Embed(spec.relative_attention_num_buckets, spec.num_heads,
                     embedding_init=INIT, name="relative_attention_bias")
    return jnp.transpose(table(buckets), (2, 0, 1))[None]

  def _feed_forward(self, x: jax.Array, dropout) -> jax.Array:
    """relu: `wo relu(wi x)`; gated-gelu: `wo (gelu_tanh(wi_0 x) * wi_1 x)`."""
    spec = self.spec

    def dense(features: int, name: str) -> nn.Dense:
      return nn.Dense(features, use_bias=False, dtype=self.dtype, kernel_init=INIT,
                      dot_general=self.dot_general, name=name)

    if spec.activation == "gated-gelu":
      # HF's 'gelu_new' is the tanh approximation (jax.nn.gelu's default).
      h = (jax.nn.gelu(dense(spec.intermediate_size, "wi_0")(x), approximate=True)
           * dense(spec.intermediate_size, "wi_1")(x))
    else:
      h = jax.nn.relu(dense(spec.intermediate_size, "wi")(x))
    return dense(spec.hidden_size, "wo")(dropout(h))


class T5Encoder(nn.Module):
  """HF `T5EncoderModel` plus sentence-transformers pooling.

  Parameters stay float32; `dtype` is the compute dtype (norms and softmax run in
  float32). The pooled vector is NOT L2-normalised (the caller does that when
  `spec.normalize`). Every block's input, then the final states, are sown as
  `intermediates/hidden_states` (num_layers + 1 entries, HF's `output_hidden_states`):
  `apply(..., mutable=['intermediates'])` returns them.
  """
  spec: EncoderSpec
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  dot_general: Optional[Callable] = None  # The Dense layers' (`matmul.dense_dot_general`).
  written_attention: bool = False  # `bert.self_attention`'s written_gradient.

  @nn.compact
  def __call__(self, tokens: jax.Array, deterministic: bool = True,
               extra: Optional[Tuple[jax.Array, jax.Array]] = None):
    """tokens [B, L] int (spec.pad_token_id = padding) -> (states [B, L', d], pooled [B, d]).

    `extra` = (embeddings [B, H, d], mask [B, H]) are input positions appended after the
    token embeddings (history items); the relative position bias spans all L' = L + H.
    """
    spec = self.spec
    if spec.kind != "t5":
      raise ValueError(f"T5Encoder needs a 't5' spec, got kind {spec.kind!r}")

    def dropout(y):
      return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)

    x = nn.Embed(spec.vocab_size, spec.hidden_size, embedding_init=EMBED_INIT,
                 name="embeddings")(tokens)
    x, mask = append_inputs(x.astype(self.dtype), tokens != spec.pad_token_id, extra)
    x = dropout(x)
    bias = None
    for i in range(spec.num_layers):
      self.sow("intermediates", "hidden_states", x)
      x, bias = T5Layer(spec, self.dtype, self.dropout_rate, has_relative_bias=(i == 0),
                        dot_general=self.dot_general,
                        written_attention=self.written_attention, name=f"layer_{i}")(
                            x, bias, mask, deterministic)
    states = dropout(RMSNorm(spec.layer_norm_eps, self.dtype, name="final_layer_norm")(x))
    states = states.astype(jnp.float32)
    self.sow("intermediates", "hidden_states", states)
    return states, pool(states, mask, spec.pooling)
