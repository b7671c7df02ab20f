"""Helpers shared by the benchmark scripts: machine description and timing."""

import time

import jax
import jax.numpy as jnp

from dgi_jax.benchmark.machine import machine_description  # noqa: F401  (re-exported)
from dgi_jax.host_memory import keep_freed_memory_in_heap  # noqa: F401  (re-exported)
from dgi_jax.models import matmul


def time_calls(fn, repeats: int) -> float:
  """Median wall seconds of `fn()` (which must block until its result is ready)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  times.sort()
  return times[len(times) // 2]


def best_interleaved(variants, repeats: int) -> dict:
  """{name: best wall seconds} of each `variants[name]()` (blocking), each called once
  first to compile, then all in turn `repeats` times, so that a busy spell of the machine
  slows every variant alike."""
  for fn in variants.values():
    fn()
  seconds = {name: [] for name in variants}
  for _ in range(repeats):
    for name, fn in variants.items():
      start = time.perf_counter()
      fn()
      seconds[name].append(time.perf_counter() - start)
  return {name: min(times) for name, times in seconds.items()}


def matmul_peak_flops(n: int = 2048, repeats: int = 10, dtype="float32") -> float:
  """Measured FLOP/s of a jitted n x n matmul in `dtype` (random operands: zeros run faster
  on a GPU): the practical peak of this machine at JAX's default precision. A 16-bit
  dtype is timed both as `x @ x` and as the Dense layers' flat matmul, which accumulates
  it into float32 and rounds (models/matmul.py), and the faster counts: XLA:CPU runs only
  the second on the processor's bfloat16 instructions."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  products = [jax.jit(lambda x: x @ x)]
  if matmul.accumulates_in_float32(dtype):
    products.append(jax.jit(lambda x: matmul.flat_dot_general(x, x, (((1,), (0,)), ((), ())))))
  best = float("inf")
  for f in products:
    f(a).block_until_ready()
    best = min(best, time_calls(lambda f=f: f(a).block_until_ready(), repeats))
  return 2 * n**3 / best

