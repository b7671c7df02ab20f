"""BERT-family encoder (Hugging Face `BertModel`) as a pure Flax module.

Built from an `EncoderSpec` and loaded with `pretrained.load_params`. The parameter tree
is `embeddings` (word / position / token-type tables and their LayerNorm) plus one
`layer_{i}` per block, so a caller can freeze "embeddings + the bottom N layers" by name.
`self_attention` and `pool` are shared with models/t5.py.
"""

from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dgi_jax.models import attention
from dgi_jax.models.pretrained import EncoderSpec
from dgi_jax.models.transformer import append_inputs, exact_gelu, masked_mean

# HF's BertModel initialisation; it only matters for parameters not loaded from a file.
INIT = nn.initializers.normal(stddev=0.02)


def self_attention(x: jax.Array, key_mask: jax.Array, *, spec: EncoderSpec, dtype: Any,
                   dropout_rate: float, deterministic: bool, use_bias: bool, scale: float,
                   bias: Optional[jax.Array] = None,
                   dot_general: Optional[Callable] = None,
                   written_gradient: bool = False) -> jax.Array:
  """Multi-head self-attention; its Dense layers query/key/value/attention_output.

  Call it from a compact `__call__`: the Dense layers become children of that module.
  x [B, L, d], key_mask [B, L] (True at real tokens), bias [1 | B, H, L, L] added to the
  scores -> [B, L, d]. Scores and softmax are float32 whatever the compute dtype.
  `dot_general` is the Dense layers' (`matmul.dense_dot_general`; None: Flax's default).
  `written_gradient`: the scores, softmax and context through `attention.attend` (the
  same values, a backward written for XLA:CPU) unless dropout is active.
  """
  batch, length = x.shape[:2]

  def dense(name: str, features: int) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=INIT,
                    dot_general=dot_general, name=name)

  def heads(name: str) -> jax.Array:
    return dense(name, spec.inner_size)(x).reshape(batch, length, spec.num_heads, -1)

  q, k, v = heads("query"), heads("key"), heads("value")
  attend_mask = key_mask[:, None, None, :]  # [B, 1, 1, L]
  if written_gradient and (dropout_rate == 0.0 or deterministic):
    context = attention.attend(q, k, v, scale=scale, mask=attend_mask, bias=bias)
  else:
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
    if bias is not None:
      scores = scores + bias.astype(jnp.float32)
    # The most negative float, as HF's additive mask: padding keys get exactly zero weight.
    scores = jnp.where(attend_mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    probs = nn.Dropout(dropout_rate)(probs, deterministic=deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
  context = context.reshape(batch, length, spec.inner_size)
  return dense("attention_output", spec.hidden_size)(context)


def pool(states: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
  """Sentence-transformers pooling: states [B, L, d], mask [B, L] (True = real) -> [B, d]."""
  if mode == "cls":
    return states[:, 0]
  if mode == "max":
    # As sentence-transformers: padding positions are set to -1e9 before the max.
    return jnp.where(mask[..., None], states, -1e9).max(axis=1)
  return masked_mean(states, mask)


def _layer_norm(spec: EncoderSpec, dtype: Any, name: str) -> nn.LayerNorm:
  # Two-pass variance, as torch computes it: flax's default one-pass E[x^2] - E[x]^2 loses
  # digits when |mean| >> std.
  return nn.LayerNorm(epsilon=spec.layer_norm_eps, dtype=dtype, use_fast_variance=False,
                      name=name)


class BertEmbeddings(nn.Module):
  """Word + absolute position + token-type (type 0) embeddings, LayerNorm, dropout."""
  spec: EncoderSpec
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, tokens: jax.Array, deterministic: bool) -> jax.Array:
    """tokens [B, L] -> [B, L, d] in the compute dtype."""
    spec, length = self.spec, tokens.shape[1]
    if length > spec.max_positions:
      raise ValueError(f"sequence length {length} exceeds max_positions {spec.max_positions}")

    def table(size: int, name: str) -> nn.Embed:
      return nn.Embed(size, spec.hidden_size, embedding_init=INIT, name=name)

    x = table(spec.vocab_size, "word_embeddings")(tokens)
    # Every request is a single segment: token type 0. Summed in HF's order.
    x = x + table(spec.type_vocab_size, "token_type_embeddings")(jnp.zeros((1, 1), jnp.int32))
    x = x + table(spec.max_positions, "position_embeddings")(jnp.arange(length)[None])
    x = _layer_norm(spec, self.dtype, "layer_norm")(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class BertLayer(nn.Module):
  """Post-LN block: `LN(x + attn(x))`, then `LN(h + W2 gelu(W1 h))`, as HF's BertLayer."""
  spec: EncoderSpec
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  dot_general: Optional[Callable] = None  # The Dense layers' (`matmul.dense_dot_general`).
  written_attention: bool = False  # `self_attention`'s written_gradient.

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array, deterministic: bool) -> jax.Array:
    """x [B, L, d], key_mask [B, L] -> [B, L, d]."""
    spec, dtype = self.spec, self.dtype

    def dropout(y):
      return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)

    def dense(features: int, name: str) -> nn.Dense:
      return nn.Dense(features, dtype=dtype, kernel_init=INIT, dot_general=self.dot_general,
                      name=name)

    y = self_attention(x, key_mask, spec=spec, dtype=dtype, dropout_rate=self.dropout_rate,
                       deterministic=deterministic, use_bias=True, scale=spec.head_dim**-0.5,
                       dot_general=self.dot_general,
                       written_gradient=self.written_attention)
    x = _layer_norm(spec, dtype, "attention_layer_norm")(x + dropout(y))
    y = exact_gelu(dense(spec.intermediate_size, "intermediate")(x))
    y = dense(spec.hidden_size, "output")(y)
    return _layer_norm(spec, dtype, "output_layer_norm")(x + dropout(y))


class BertEncoder(nn.Module):
  """HF `BertModel` (without its pooler head) plus sentence-transformers pooling.

  Parameters stay float32; `dtype` is the compute dtype. The pooled vector is NOT
  L2-normalised (the caller does that when `spec.normalize`). Every layer's input, then
  the final states, are sown as `intermediates/hidden_states` (num_layers + 1 entries,
  HF's `output_hidden_states`): `apply(..., mutable=['intermediates'])` returns them.
  """
  spec: EncoderSpec
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  dot_general: Optional[Callable] = None  # The Dense layers' (`matmul.dense_dot_general`).
  written_attention: bool = False  # `self_attention`'s written_gradient.

  @nn.compact
  def __call__(self, tokens: jax.Array, deterministic: bool = True,
               extra: Optional[Tuple[jax.Array, jax.Array]] = None, *,
               layers: Optional[Tuple[int, int]] = None,
               hidden: Optional[Tuple[jax.Array, jax.Array]] = None):
    """tokens [B, L] int (spec.pad_token_id = padding) -> (states [B, L', d], pooled [B, d]).

    `extra` = (embeddings [B, H, d], mask [B, H]) are input positions appended after the
    embedding layer's output (history items, with their own position embedding); then
    L' = L + H and the pooling covers them too.

    `layers` = (start, stop) runs only layers start .. stop - 1 (a frozen bottom's output
    computed once, then the trained top every step: `encoder_cache.py`). With start > 0
    the input is `hidden` = (x [B, L', d], mask [B, L']) as a run stopping at `start`
    returns it, and `tokens` and `extra` are not read; with stop < num_layers the result
    is that (x, mask), the input of layer `stop`, instead of (states, pooled).
    """
    spec = self.spec
    if spec.kind != "bert":
      raise ValueError(f"BertEncoder needs a 'bert' spec, got kind {spec.kind!r}")
    start, stop = layers if layers is not None else (0, spec.num_layers)
    settings = dict(spec=spec, dtype=self.dtype, dropout_rate=self.dropout_rate)
    if start == 0:
      x = BertEmbeddings(**settings, name="embeddings")(tokens, deterministic)
      x, mask = append_inputs(x, tokens != spec.pad_token_id, extra)
    else:
      x, mask = hidden
      x = x.astype(self.dtype)
    for i in range(start, stop):
      self.sow("intermediates", "hidden_states", x)
      x = BertLayer(**settings, dot_general=self.dot_general,
                    written_attention=self.written_attention, name=f"layer_{i}")(
          x, mask, deterministic)
    if stop < spec.num_layers:
      return x, mask
    states = x.astype(jnp.float32)
    self.sow("intermediates", "hidden_states", states)
    return states, pool(states, mask, spec.pooling)
