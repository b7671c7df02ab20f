"""Scaled dot-product attention with a backward pass written for XLA:CPU.

Autodiff of `flax.linen.dot_product_attention` on the default train step's request
encoder ([128, 64] tokens, 4 heads of 32) spends most of a layer's attention time in its
backward: a softmax gradient built from broadcasts and generic dots, and score-shaped
temporaries XLA:CPU runs well below its matmul speed (one layer's forward and backward
46 ms against PyTorch's 12 ms on the same shapes; docs/DESIGN.md, "Attention's
backward"). Here the heads move ahead of the positions once ([N, H, L, D]) and the
backward is written out from the saved probabilities P:

  dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dP * P)),   dQ = dS K,   dK = dS^T Q,

with dS zero at masked keys (where autodiff's `where` sends no gradient) and the score
bias's gradient dS summed over its broadcast axes. Scores, softmax and dS are float32
whatever the compute dtype; the products run in the operands' dtype.

`model.attention_gradient` chooses: 'written' (this), 'autodiff' (Flax's own attention
and its gradient) or 'auto' ('written' on the CPU backend, 'autodiff' on GPU and TPU, whose
fused attention kernels are left alone). With dropout active the attention always falls
back to Flax's, whose dropout draws this module does not reproduce.
"""

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def _probs(q, k, mask, bias):
  """q [N, H, Lq, D] (scaled), k [N, H, Lk, D] -> float32 softmax weights [N, H, Lq, Lk]."""
  scores = jnp.einsum("nhqd,nhkd->nhqk", q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    scores = scores + bias.astype(jnp.float32)
  if mask is not None:
    # The most negative float, as Flax and HF mask: masked keys get exactly zero weight.
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores, axis=-1)


def _context(probs, v):
  return jnp.einsum("nhqk,nhkd->nhqd", probs.astype(v.dtype), v)


@jax.custom_vjp
def _attend(q, k, v, mask, bias):
  """q [N, H, Lq, D] (already scaled), k, v [N, H, Lk, D], mask bool and bias
  broadcastable to [N, H, Lq, Lk] (either None) -> context [N, H, Lq, D]."""
  return _context(_probs(q, k, mask, bias), v)


def _attend_fwd(q, k, v, mask, bias):
  probs = _probs(q, k, mask, bias)
  return _context(probs, v), (q, k, v, mask, bias, probs)


def _attend_bwd(residuals, d_context):
  q, k, v, mask, bias, probs = residuals
  d_v = jnp.einsum("nhqk,nhqd->nhkd", probs.astype(v.dtype), d_context)
  d_probs = jnp.einsum("nhqd,nhkd->nhqk", d_context, v, preferred_element_type=jnp.float32)
  d_scores = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
  if mask is not None:
    d_scores = jnp.where(mask, d_scores, 0.0)
  d_bias = None
  if bias is not None:
    summed = tuple(axis for axis, (b, s) in enumerate(zip(bias.shape, d_scores.shape))
                   if b == 1 and s != 1)
    d_bias = jnp.sum(d_scores, axis=summed, keepdims=True).astype(bias.dtype)
  d_scores = d_scores.astype(q.dtype)
  d_q = jnp.einsum("nhqk,nhkd->nhqd", d_scores, k)
  d_k = jnp.einsum("nhqk,nhqd->nhkd", d_scores, q)
  return d_q, d_k.astype(k.dtype), d_v.astype(v.dtype), None, d_bias


_attend.defvjp(_attend_fwd, _attend_bwd)


def attend(query: jax.Array, key: jax.Array, value: jax.Array, *, scale: float,
           mask: Optional[jax.Array] = None, bias: Optional[jax.Array] = None) -> jax.Array:
  """query [..., Lq, H, D], key / value [..., Lk, H, D] (the same leading axes), mask (True
  = attend) and bias broadcastable to [..., H, Lq, Lk] -> context [..., Lq, H, D] in the
  query's dtype: softmax(scale * Q K^T + bias, masked) V with the written backward."""
  batch_shape = query.shape[:-3]

  def heads_major(x):  # [..., L, H, D] -> [N, H, L, D]
    return jnp.swapaxes(x.reshape((-1,) + x.shape[-3:]), 1, 2)

  def flat_scores(x):  # broadcastable to [..., H, Lq, Lk] -> [N, h, q, k]
    if x is None:
      return None
    x = jnp.broadcast_to(x, batch_shape + x.shape[max(x.ndim - 3, 0):])
    return x.reshape((-1,) + x.shape[-3:])

  q = heads_major(query * jnp.asarray(scale, query.dtype))
  context = _attend(q, heads_major(key), heads_major(value), flat_scores(mask),
                    flat_scores(bias))
  return jnp.swapaxes(context, 1, 2).reshape(query.shape).astype(query.dtype)


def uses_written_gradient(attention_gradient: str) -> bool:
  """Whether `model.attention_gradient` (checked by `ModelConfig`) selects `attend` on
  this backend."""
  if attention_gradient == "auto":
    return jax.default_backend() == "cpu"
  return attention_gradient == "written"


def flax_attention_fn(attention_gradient: str) -> Callable:
  """The `attention_fn` of a `nn.MultiHeadDotProductAttention` under
  `model.attention_gradient`: Flax's own, or `attend` behind Flax's signature."""
  if not uses_written_gradient(attention_gradient):
    return nn.dot_product_attention

  def attention_fn(query, key, value, mask=None, dropout_rng=None, dropout_rate=0.0,
                   broadcast_dropout=True, deterministic=False, dtype=None, precision=None):
    if dropout_rate > 0.0 and not deterministic:
      return nn.dot_product_attention(
          query, key, value, mask=mask, dropout_rng=dropout_rng, dropout_rate=dropout_rate,
          broadcast_dropout=broadcast_dropout, deterministic=deterministic, dtype=dtype,
          precision=precision)
    if dtype is not None:
      query, key, value = (x.astype(dtype) for x in (query, key, value))
    return attend(query, key, value, scale=query.shape[-1] ** -0.5, mask=mask)

  return attention_fn
