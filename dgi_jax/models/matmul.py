"""The Dense layers' matmul, with a backward pass written for XLA:CPU's fast dots.

Flax's `Dense` / `DenseGeneral` compute `x [..., K] . W [K, ...]` with `lax.dot_general`.
Autodiff writes the kernel's gradient as `dot_general(g, x)` contracting every leading
axis, then a transpose. On a 3-D activation XLA:CPU makes that a transposed copy of `g`
followed by a dot contracting dimension 0 of one operand and dimension 1 of the other,
which it runs through its slower generic dot instead of its fast matmul path: in the
default train step the MLPs' kernel gradients took 12 ms each for what a plain
`[K, N] x [N, M]` matmul does in 6 (docs/DESIGN.md, "Kernel gradients"). Here the
operands are flattened to 2-D first and the backward is written out: `dx = g W^T` and
`dW = x^T g`, each one 2-D dot contracting the flattened token axis, with no transpose
of the activations. The values are the same products as autodiff's.

With 16-bit float operands (bfloat16, float16: `accumulates_in_float32`) the three
products accumulate in float32 and round once to the operands' dtype.

`model.dense_gradient` chooses: 'flat' (this), 'autodiff' (`lax.dot_general`'s own
gradient) or 'auto' ('flat' on the CPU backend, 'autodiff' on GPU and TPU, where the
flattened reshape is not known to pay and XLA's own layouts are left alone).
"""

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax


def _flat_operands(lhs, rhs, k: int):
  """lhs [..., K1..Kk], rhs [K1..Kk, ...] -> lhs [N, K], rhs [K, M]."""
  n = math.prod(lhs.shape[:lhs.ndim - k])
  inner = math.prod(rhs.shape[:k])
  return lhs.reshape(n, inner), rhs.reshape(inner, -1)


def accumulates_in_float32(dtype) -> bool:
  """Whether the Dense layers' matmuls accumulate operands of `dtype` into float32 and
  round the product back: 16-bit floats. XLA:CPU runs a bfloat16 dot with a bfloat16
  result through a path slower than float32's, and one with a float32 result on the
  processor's bfloat16 instructions, 1.9x float32's speed (docs/DESIGN.md, "bfloat16 on
  a CPU")."""
  return bool(jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32)


def _matmul(a, b, contract_a: int, contract_b: int, precision):
  """One 2-D dot in the operands' dtype (accumulated in float32 where
  `accumulates_in_float32`)."""
  dtype = jnp.result_type(a, b)
  out = lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                        precision=precision,
                        preferred_element_type=(jnp.float32 if accumulates_in_float32(dtype)
                                                else None))
  return out.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _contract_trailing(lhs, rhs, k: int, precision):
  """lhs [..., K1..Kk] . rhs [K1..Kk, ...] over the k named axes -> [..., rhs's rest]."""
  lhs2, rhs2 = _flat_operands(lhs, rhs, k)
  out = _matmul(lhs2, rhs2, 1, 0, precision)
  return out.reshape(lhs.shape[:lhs.ndim - k] + rhs.shape[k:])


def _contract_trailing_fwd(lhs, rhs, k, precision):
  return _contract_trailing(lhs, rhs, k, precision), (lhs, rhs)


def _contract_trailing_bwd(k, precision, residuals, g):
  lhs, rhs = residuals
  lhs2, rhs2 = _flat_operands(lhs, rhs, k)
  g2 = g.reshape(lhs2.shape[0], rhs2.shape[1])  # [N, M]
  d_lhs = _matmul(g2, rhs2, 1, 1, precision)  # [N, M] x [K, M] -> [N, K]
  d_rhs = _matmul(lhs2, g2, 0, 0, precision)  # [N, K] x [N, M] -> [K, M]
  return (d_lhs.reshape(lhs.shape).astype(lhs.dtype),
          d_rhs.reshape(rhs.shape).astype(rhs.dtype))


_contract_trailing.defvjp(_contract_trailing_fwd, _contract_trailing_bwd)


def flat_dot_general(lhs, rhs, dimension_numbers, precision=None,
                     preferred_element_type=None):
  """`lax.dot_general` with the flattened backward where the contraction is a Dense
  layer's (lhs's trailing axes against rhs's leading axes, no batch axes); any other
  contraction, or an explicit `preferred_element_type`, goes to `lax.dot_general`."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  k = len(lhs_contract)
  dense = (not lhs_batch and not rhs_batch and preferred_element_type is None
           and tuple(lhs_contract) == tuple(range(lhs.ndim - k, lhs.ndim))
           and tuple(rhs_contract) == tuple(range(k)))
  if not dense:
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
  return _contract_trailing(lhs, rhs, k, precision)


def dense_dot_general(dense_gradient: str) -> Optional[Callable]:
  """The `dot_general` a Dense layer gets under `model.dense_gradient` (None: Flax's
  default, `lax.dot_general`): 'flat', 'autodiff' or 'auto' (`ModelConfig` checks it)."""
  if dense_gradient == "auto":
    dense_gradient = "flat" if jax.default_backend() == "cpu" else "autodiff"
  return flat_dot_general if dense_gradient == "flat" else None
