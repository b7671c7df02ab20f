"""Pre-LN transformer blocks of the scratch text encoder and the SID decoder."""

import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dgi_jax.models import attention as attention_core
from dgi_jax.models import matmul
from dgi_jax.models.config import ModelConfig

EMBED_INIT = nn.initializers.normal(stddev=0.02)
LAYER_NORM_EPS = 1e-6  # Matched explicitly by the PyTorch reference (torch default is 1e-5).


def exact_gelu(x):
  """`x * Phi(x)` with the exact normal CDF, as torch's nn.GELU() computes it.

  Not jax.nn.gelu's default tanh approximation, so the torch reference matches without a
  flag; and written with erf, as torch writes it, rather than jax.nn.gelu(approximate=
  False)'s erfc, which XLA:CPU evaluates several times slower (4.8 against 0.9 ms on one
  [128, 64, 256] activation, one core; docs/DESIGN.md, "Kernel gradients").
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def layer_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=cfg.compute_dtype, name=name)


def attention(cfg: ModelConfig, name: str,
              zero_output: bool = False) -> nn.MultiHeadDotProductAttention:
  """Multi-head attention; `zero_output` starts its output projection at zero."""
  out_init = nn.initializers.zeros if zero_output else None  # None: as the q/k/v kernels.
  dot_general = matmul.dense_dot_general(cfg.dense_gradient)
  return nn.MultiHeadDotProductAttention(
      num_heads=cfg.num_heads, qkv_features=cfg.d_model, out_features=cfg.d_model,
      dropout_rate=cfg.dropout_rate, dtype=cfg.compute_dtype, out_kernel_init=out_init,
      qkv_dot_general=dot_general, out_dot_general=dot_general,
      attention_fn=attention_core.flax_attention_fn(cfg.attention_gradient), name=name)


class Mlp(nn.Module):
  """Two dense layers with an exact GELU between; `zero_output` zero-initialises the second."""
  cfg: ModelConfig
  zero_output: bool = False

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.cfg
    dot_general = matmul.dense_dot_general(cfg.dense_gradient)
    x = nn.Dense(cfg.mlp_dim, dtype=cfg.compute_dtype, dot_general=dot_general, name="wi")(x)
    x = exact_gelu(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    out_init = nn.initializers.zeros if self.zero_output else nn.linear.default_kernel_init
    return nn.Dense(cfg.d_model, dtype=cfg.compute_dtype, kernel_init=out_init,
                    dot_general=dot_general, name="wo")(x)


class EncoderBlock(nn.Module):
  """`x += MHA(LN(x))`, `x += MLP(LN(x))`; keys masked at padding."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, key_mask, deterministic: bool):
    cfg = self.cfg
    y = layer_norm(cfg, "ln_attn")(x)
    y = attention(cfg, "attn")(y, y, mask=key_mask, deterministic=deterministic)
    x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    y = layer_norm(cfg, "ln_mlp")(x)
    y = Mlp(cfg, name="mlp")(y, deterministic)
    return x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)


class DecoderBlock(nn.Module):
  """Causal self-attention over the levels, cross-attention to the request tokens, MLP.

  With `cfg.decoder_identity_init` the three residual branches end in zero-initialised
  projections, so the untrained block is the identity map.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, memory, memory_key_mask, deterministic: bool):
    """x [B, n, d] or [B, G, n, d], memory [B, L, d], memory_key_mask [B, 1, 1, L]
    -> x's shape.

    With a group axis G (the beams of one request) the G sequences are decoded
    independently (self-attention stays within each) and share their request's memory.
    """
    cfg = self.cfg
    zero = cfg.decoder_identity_init
    causal = nn.make_causal_mask(jnp.ones(x.shape[:-1], jnp.int32))
    y = layer_norm(cfg, "ln_self")(x)
    y = attention(cfg, "self_attn", zero)(y, y, mask=causal, deterministic=deterministic)
    x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    y = layer_norm(cfg, "ln_cross")(x)
    y = cross_attend(attention(cfg, "cross_attn", zero), y, memory, memory_key_mask,
                     deterministic)
    x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    y = layer_norm(cfg, "ln_mlp")(x)
    y = Mlp(cfg, zero, name="mlp")(y, deterministic)
    return x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)


def cross_attend(attn: nn.MultiHeadDotProductAttention, x, memory, key_mask,
                 deterministic: bool):
  """`attn(x, memory)` with the queries of every group of a request as one sequence.

  x [B, n, d] or [B, G, n, d], memory [B, L, d], key_mask [B, 1, 1, L] -> x's shape.
  Attention is computed per query position, so the G * n queries of a request can share
  one call: its memory's keys and values are projected once per request rather than once
  per group member (the beam search's G = beam copies of a request would otherwise
  recompute them beam times, most of the search's FLOPs). Without a group axis the
  reshape is the identity and the call is the plain `attn(x, memory)`.
  """
  queries = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, G * n, d]
  return attn(queries, memory, mask=key_mask, deterministic=deterministic).reshape(x.shape)


def masked_mean(states: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """Mean of `states [B, L, d]` over positions where `mask [B, L]` is True."""
  mask = mask.astype(states.dtype)[..., None]
  return (states * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)


class TextEncoder(nn.Module):
  """Token + learned position embeddings, pre-LN blocks, final LN, masked-mean pooling."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, deterministic: bool = True,
               extra: Optional[Tuple[jax.Array, jax.Array]] = None):
    """tokens [B, L] (0 = padding) -> (states [B, L', d], pooled [B, d]).

    `extra` = (embeddings [B, H, d], mask [B, H]): input positions appended after the
    token embeddings (history items); then L' = L + H and the pooling covers them too.
    """
    cfg = self.cfg
    x = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=EMBED_INIT,
                 name="token_embed")(tokens)
    positions = self.param("pos_embed", EMBED_INIT, (cfg.max_len, cfg.d_model))
    x = (x + positions[None, :tokens.shape[1]]).astype(cfg.compute_dtype)
    x, mask = append_inputs(x, tokens != 0, extra)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    for i in range(cfg.encoder_layers):
      x = EncoderBlock(cfg, name=f"layers_{i}")(x, mask[:, None, None, :], deterministic)
    states = layer_norm(cfg, "ln_final")(x).astype(jnp.float32)
    return states, masked_mean(states, mask)


def append_inputs(x: jax.Array, mask: jax.Array,
                  extra: Optional[Tuple[jax.Array, jax.Array]]):
  """Token inputs x [B, L, d] and mask [B, L] with `extra` (embeddings [B, H, d], mask
  [B, H]) appended -> ([B, L + H, d], [B, L + H]); unchanged when `extra` is None."""
  if extra is None:
    return x, mask
  embeddings, extra_mask = extra
  return (jnp.concatenate([x, embeddings.astype(x.dtype)], axis=1),
          jnp.concatenate([mask, extra_mask], axis=1))
