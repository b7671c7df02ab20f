"""The Dense layers' flattened backward (models/matmul.py) computes autodiff's products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgi_jax.models import matmul
from dgi_jax.models.config import ModelConfig
from model_fixtures import assert_gradients_close, init, random_batch, sin_loss_and_grads
from model_fixtures import small_model

# (lhs shape, rhs shape, contracted axes): a Dense layer on a 3-D and a 2-D activation,
# DenseGeneral's attention projections into heads [d] -> [H, dh] and out of them.
DENSE_CASES = [((4, 6, 8), (8, 5), 1), ((7, 8), (8, 3), 1), ((4, 6, 8), (8, 2, 3), 1),
               ((4, 6, 2, 3), (2, 3, 8), 2)]


def _dense_numbers(lhs_ndim: int, k: int):
  return ((tuple(range(lhs_ndim - k, lhs_ndim)), tuple(range(k))), ((), ()))


def _value_and_grads(dot_general, lhs, rhs, dims, weights):
  def loss(a, b):
    return jnp.sum(dot_general(a, b, dims) * weights)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(lhs, rhs)


@pytest.mark.parametrize("lhs_shape,rhs_shape,k", DENSE_CASES)
def test_flat_value_and_gradients_equal_autodiffs(lhs_shape, rhs_shape, k):
  rs = np.random.RandomState(0)
  lhs, rhs = rs.randn(*lhs_shape).astype(np.float32), rs.randn(*rhs_shape).astype(np.float32)
  out_shape = lhs_shape[:len(lhs_shape) - k] + rhs_shape[k:]
  weights = rs.randn(*out_shape).astype(np.float32)
  dims = _dense_numbers(len(lhs_shape), k)
  value, (d_lhs, d_rhs) = _value_and_grads(matmul.flat_dot_general, lhs, rhs, dims, weights)
  ref_value, (ref_lhs, ref_rhs) = _value_and_grads(jax.lax.dot_general, lhs, rhs, dims,
                                                    weights)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  assert d_lhs.shape == lhs.shape and d_rhs.shape == rhs.shape
  np.testing.assert_allclose(d_lhs, ref_lhs, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d_rhs, ref_rhs, rtol=1e-5, atol=1e-5)
  # Known answer for the kernel: dW = x^T g over the flattened leading axes.
  x2 = lhs.reshape(-1, int(np.prod(rhs_shape[:k])))
  g2 = weights.reshape(x2.shape[0], -1)
  np.testing.assert_allclose(np.asarray(d_rhs).reshape(x2.shape[1], -1), x2.T @ g2,
                             rtol=1e-4, atol=1e-4)


def test_bfloat16_operands_keep_their_dtype_and_autodiffs_values():
  rs = np.random.RandomState(1)
  lhs = jnp.asarray(rs.randn(4, 6, 8), jnp.bfloat16)
  rhs = jnp.asarray(rs.randn(8, 5), jnp.bfloat16)
  weights = jnp.asarray(rs.randn(4, 6, 5), jnp.bfloat16)
  dims = _dense_numbers(3, 1)
  _, grads = _value_and_grads(matmul.flat_dot_general, lhs, rhs, dims, weights)
  _, ref = _value_and_grads(jax.lax.dot_general, lhs, rhs, dims, weights)
  for ours, theirs in zip(grads, ref):
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32),
                               rtol=2e-2, atol=5e-2)


def test_bfloat16_products_accumulate_in_float32_and_round_once():
  """1 + 256 x 2^-9 = 1.5 is a bfloat16, but 1 + 2^-9 rounds back to 1 in bfloat16 (8
  significant bits), so a product accumulated in bfloat16 would stay at 1. The forward
  product and both gradients are float32 dots rounded to bfloat16."""
  lhs = jnp.concatenate([jnp.ones((2, 1)), jnp.full((2, 256), 2.0**-9)], 1).astype(jnp.bfloat16)
  rhs = jnp.ones((257, 3), jnp.bfloat16)
  dims = _dense_numbers(2, 1)
  out = matmul.flat_dot_general(lhs, rhs, dims)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.full((2, 3), 1.5, np.float32))
  jaxpr = str(jax.make_jaxpr(jax.grad(
      lambda a, b: jnp.sum(matmul.flat_dot_general(a, b, dims).astype(jnp.float32)),
      argnums=(0, 1)))(lhs, rhs))
  assert jaxpr.count("preferred_element_type=float32") == 3, jaxpr
  float32_jaxpr = str(jax.make_jaxpr(lambda a, b: matmul.flat_dot_general(a, b, dims))(
      lhs.astype(jnp.float32), rhs.astype(jnp.float32)))
  assert "convert_element_type" not in float32_jaxpr


def test_other_contractions_are_left_to_lax():
  """Batch axes (attention's einsums) and contractions over other axes are not Dense
  layers': they trace to a plain dot_general, without the custom backward."""
  a, b = jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))
  batched = (((2,), (1,)), ((0,), (0,)))
  leading = (((0,), (0,)), ((), ()))
  for lhs, rhs, dims in [(a, b, batched), (a, jnp.ones((2, 7)), leading)]:
    jaxpr = str(jax.make_jaxpr(lambda x, y, d=dims: matmul.flat_dot_general(x, y, d))(lhs, rhs))
    assert "custom_vjp" not in jaxpr and "dot_general" in jaxpr
  jaxpr = str(jax.make_jaxpr(lambda x, y: matmul.flat_dot_general(
      x, y, _dense_numbers(3, 1)))(a, jnp.ones((4, 5))))
  assert "custom_vjp" in jaxpr


def test_dense_gradient_setting_picks_the_dot_general():
  assert matmul.dense_dot_general("flat") is matmul.flat_dot_general
  assert matmul.dense_dot_general("autodiff") is None
  expected = matmul.flat_dot_general if jax.default_backend() == "cpu" else None
  assert matmul.dense_dot_general("auto") is expected
  with pytest.raises(ValueError, match="model.dense_gradient='fast'"):
    ModelConfig(vocab_size=10, max_len=4, dense_gradient="fast")


def test_model_gradients_equal_under_flat_and_autodiff():
  """The whole DGI model (encoders, quantizer, decoder): the same gradient for every
  parameter whichever backward the Dense layers use."""
  batch = random_batch(6)
  grads = {}
  for mode in ("flat", "autodiff"):
    # Attention's backward pinned, so only the Dense layers' differs.
    model = small_model(dense_gradient=mode, attention_gradient="autodiff")
    _, (_, grads[mode]) = sin_loss_and_grads(model, batch, init(model, batch))
  leaves = assert_gradients_close(grads["flat"], grads["autodiff"])
  kernels = sum("kernel" in name and float(np.abs(ref).max()) > 0 for name, ref in leaves)
  assert kernels >= 8  # Attention and MLP kernels of encoder and decoder got gradients.
