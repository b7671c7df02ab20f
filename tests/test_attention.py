"""Attention with the written backward (models/attention.py) computes autodiff's values."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgi_jax.models import attention
from dgi_jax.models.config import ModelConfig
from model_fixtures import assert_gradients_close, init, random_batch, sin_loss_and_grads
from model_fixtures import small_model


def _qkv(shape_q, shape_k, seed=0, dtype=jnp.float32):
  rs = np.random.default_rng(seed)
  q = rs.normal(size=shape_q)
  k, v = rs.normal(size=shape_k), rs.normal(size=shape_k)
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _reference(q, k, v, *, scale, mask=None, bias=None):
  """softmax(scale Q K^T + bias, masked) V by plain jnp, differentiated by autodiff."""
  scores = jnp.einsum("...qhd,...khd->...hqk", q, k) * scale
  if bias is not None:
    scores = scores + bias
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  return jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(scores, axis=-1), v)


def _value_and_grads(fn, *args):
  """d sum(sin(fn(...)) * w) / d every argument (w fixed and varied, so no gradient
  vanishes by symmetry)."""
  def loss(*a):
    out = fn(*a)
    w = jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape))
    return jnp.sum(jnp.sin(out) * w)
  return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args)))))(*args)


def _assert_close(ours, ref, tol=2e-5):
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    assert float(jnp.abs(b).max()) > 0
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_key_padding_mask_with_a_row_of_nothing_to_attend():
  """Request-encoder shapes: padded keys get no weight and no gradient; a sequence whose
  keys are all padding (softmax over equal scores) matches Flax's value and gradient."""
  q, k, v = _qkv((3, 7, 2, 4), (3, 7, 2, 4))
  mask = np.ones((3, 1, 1, 7), bool)
  mask[0, ..., 5:] = False
  mask[2] = False
  mask = jnp.asarray(mask)
  # Flax scales by 1 / sqrt(D) = 0.5.
  ours = _value_and_grads(lambda q, k, v: attention.attend(q, k, v, scale=0.5, mask=mask),
                          q, k, v)
  ref = _value_and_grads(lambda q, k, v: nn.dot_product_attention(q, k, v, mask=mask),
                         q, k, v)
  _assert_close(ours, ref)


def test_causal_mask_with_a_group_axis_and_cross_attention():
  """The decoder's shapes: [B, G, n] self-attention under a causal mask, and G * n queries
  attending to L memory positions."""
  q, k, v = _qkv((2, 3, 4, 2, 4), (2, 3, 4, 2, 4), seed=1)
  causal = nn.make_causal_mask(jnp.ones((2, 3, 4)))
  fn = attention.flax_attention_fn("written")
  ours = _value_and_grads(lambda q, k, v: fn(q, k, v, mask=causal), q, k, v)
  ref = _value_and_grads(lambda q, k, v: nn.dot_product_attention(q, k, v, mask=causal),
                         q, k, v)
  _assert_close(ours, ref)
  q, k, v = _qkv((2, 12, 2, 4), (2, 9, 2, 4), seed=2)
  memory_mask = jnp.asarray(np.arange(9)[None, None, None, :] < np.array([9, 4])[:, None,
                                                                                  None, None])
  ours = _value_and_grads(lambda q, k, v: fn(q, k, v, mask=memory_mask), q, k, v)
  ref = _value_and_grads(lambda q, k, v: nn.dot_product_attention(q, k, v, mask=memory_mask),
                         q, k, v)
  _assert_close(ours, ref)


def test_broadcast_bias_gets_its_summed_gradient():
  """T5's relative position bias [1, H, L, L] is shared by the batch: its gradient is the
  scores' gradient summed over the batch, at unmasked keys only."""
  q, k, v = _qkv((3, 6, 2, 4), (3, 6, 2, 4), seed=3)
  bias = jnp.asarray(np.random.default_rng(4).normal(size=(1, 2, 6, 6)), jnp.float32)
  mask = jnp.asarray(np.arange(6)[None, None, None, :] < np.array([6, 3, 5])[:, None, None,
                                                                            None])
  ours = _value_and_grads(
      lambda q, k, v, b: attention.attend(q, k, v, scale=1.0, mask=mask, bias=b), q, k, v,
      bias)
  ref = _value_and_grads(lambda q, k, v, b: _reference(q, k, v, scale=1.0, mask=mask, bias=b),
                         q, k, v, bias)
  _assert_close(ours, ref)


def test_bfloat16_operands_give_a_bfloat16_context_near_float32():
  q, k, v = _qkv((2, 5, 2, 8), (2, 5, 2, 8), seed=5)
  low = attention.attend(*(x.astype(jnp.bfloat16) for x in (q, k, v)), scale=0.3)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(low, np.float32),
                             np.asarray(_reference(q, k, v, scale=0.3)), atol=3e-2)


def test_dropout_falls_back_to_flax():
  """With dropout active the written path is not taken: the draws are Flax's own."""
  q, k, v = _qkv((2, 5, 2, 4), (2, 5, 2, 4), seed=6)
  rng = jax.random.key(0)
  kwargs = dict(dropout_rng=rng, dropout_rate=0.5, deterministic=False)
  np.testing.assert_array_equal(
      attention.flax_attention_fn("written")(q, k, v, **kwargs),
      nn.dot_product_attention(q, k, v, **kwargs))


def test_attention_gradient_setting():
  assert attention.flax_attention_fn("autodiff") is nn.dot_product_attention
  assert attention.uses_written_gradient("written")
  assert attention.uses_written_gradient("auto") == (jax.default_backend() == "cpu")
  with pytest.raises(ValueError, match="model.attention_gradient='fast'"):
    ModelConfig(vocab_size=10, max_len=4, attention_gradient="fast")


def test_model_gradients_equal_under_written_and_autodiff_attention():
  """The whole DGI model (both encoders, the decoder's self- and cross-attention): the same
  loss and gradient for every parameter whichever attention backward runs."""
  batch = random_batch(6)
  results, custom_calls = {}, {}
  for mode in ("written", "autodiff"):
    model = small_model(attention_gradient=mode, decoder_identity_init=False,
                        dense_gradient="autodiff")
    params = init(model, batch)
    loss, results[mode] = sin_loss_and_grads(model, batch, params)
    custom_calls[mode] = str(jax.make_jaxpr(loss)(params)).count("custom_vjp_call")
  # The written path was taken: the shared encoder over requests and over items, the
  # decoder's self- and cross-attention.
  assert custom_calls == {"written": 4, "autodiff": 0}
  np.testing.assert_allclose(results["written"][0], results["autodiff"][0], rtol=1e-5)
  leaves = assert_gradients_close(results["written"][1], results["autodiff"][1])
  attended = sum("attn" in name and "query']['kernel" in name and float(np.abs(ref).max()) > 0
                 for name, ref in leaves)
  assert attended == 3  # The encoder's attention, the decoder's self- and cross-attention.
