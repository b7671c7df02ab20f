"""Latency of constrained beam search vs exact dense top-K as the catalogue grows.

Synthetic setup: random SIDs over codebooks (256, 256, 256); the decoder is a toy of
realistic per-step cost (a residual MLP of width d over the query vector plus the summed
prefix code embeddings, with a d x K head per level); the dense baseline is
`lax.top_k(q @ item_emb.T)` with the same d. Both run jitted on the same device in the
same process. Reported per catalogue size: batched throughput (queries/s), single-query
p50/p99 latency, and index memory vs the dense embedding matrix.

  python speed/search_latency.py [--sizes 10000,100000,1000000] [--beam 10]
"""

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dgi_jax import decoding  # noqa: E402
from dgi_jax import index  # noqa: E402


def make_toy_decoder(rng, codebook_sizes, dim):
  """Parameters of the toy decoder; `logits` has the `tokens_to_logits` shape contract."""
  def normal(*shape):
    return jnp.asarray(rng.normal(0, shape[0] ** -0.5, shape), jnp.float32)
  return {
      "code_emb": [normal(k, dim) for k in codebook_sizes],
      "w1": normal(dim, 4 * dim),
      "w2": normal(4 * dim, dim),
      "heads": [normal(k, dim) for k in codebook_sizes],
  }


def toy_logits(params, query_rows, level, prefix):
  x = query_rows
  for j in range(level):
    x = x + params["code_emb"][j][prefix[:, j]]
  h = x + jax.nn.gelu(x @ params["w1"]) @ params["w2"]
  return h @ params["heads"][level].T


def build_searches(codebook_sizes, beam, k):
  """Jitted (params, tables, inverted, q, item_emb) -> results of each method."""
  def beam_only(params, tables, q):
    rows = decoding.expand_to_beams(q, beam)
    fn = lambda level, prefix: toy_logits(params, rows, level, prefix)
    return decoding.beam_search(fn, q.shape[0], beam, tables, codebook_sizes)

  def beam_and_rank(params, tables, inverted, q, item_emb):
    result = beam_only(params, tables, q)
    return decoding.rank_items(result, inverted, q, item_emb, k)

  def dense(q, item_emb):
    return jax.lax.top_k(q @ item_emb.T, k)

  return jax.jit(beam_only), jax.jit(beam_and_rank), jax.jit(dense)


def time_calls(fn, make_args, reps):
  """Seconds per call (list), after one warm-up (compile) call."""
  jax.block_until_ready(fn(*make_args(0)))
  times = []
  for i in range(reps):
    args = make_args(i + 1)
    jax.block_until_ready(args)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return np.asarray(times)


def normalise(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def run(args):
  codebook_sizes = tuple(int(s) for s in args.codebooks.split(","))
  rng = np.random.default_rng(0)
  params = make_toy_decoder(rng, codebook_sizes, args.dim)
  beam_only, beam_and_rank, dense = build_searches(codebook_sizes, args.beam, args.k)
  queries = normalise(jnp.asarray(rng.normal(size=(512, args.dim)), jnp.float32))

  def batch_of(n):
    return lambda i: queries[(i * n) % 512:(i * n) % 512 + n]

  rows = {}
  for size in (int(s) for s in args.sizes.split(",")):
    sids = np.stack([rng.integers(0, kk, size) for kk in codebook_sizes], axis=1)
    start = time.perf_counter()
    tables = index.build_prefix_tables(sids, codebook_sizes)
    inverted = index.build_inverted_index(sids)
    build_s = time.perf_counter() - start
    item_emb = normalise(jnp.asarray(rng.normal(size=(size, args.dim)), jnp.float32))
    big = size >= 1_000_000
    batched_reps, single_reps = (args.reps_big if big else args.reps)
    methods = {
        "beam": lambda q: beam_only(params, tables, q),
        "beam+rank": lambda q: beam_and_rank(params, tables, inverted, q, item_emb),
        "dense": lambda q: dense(q, item_emb),
    }
    for name, fn in methods.items():
      batched = time_calls(fn, lambda i: (batch_of(args.batch)(i),), batched_reps)
      single = time_calls(fn, lambda i: (batch_of(1)(i),), single_reps)
      rows[(size, name)] = {
          "qps": args.batch / np.median(batched),
          "p50_ms": 1e3 * np.percentile(single, 50),
          "p99_ms": 1e3 * np.percentile(single, 99),
      }
    stats = index.collision_stats(sids, codebook_sizes)
    print(f"N={size:>9,d}: build {build_s:.2f}s, distinct SIDs {stats['num_distinct_sids']:,d}, "
          f"max bucket {inverted.max_bucket}, prefix tables {tables.nbytes() / 2**20:.1f} MiB, "
          f"inverted index {inverted.nbytes() / 2**20:.1f} MiB, "
          f"dense embeddings {item_emb.nbytes / 2**20:.1f} MiB "
          f"(index / dense = {(tables.nbytes() + inverted.nbytes()) / item_emb.nbytes:.3f})",
          flush=True)
    for name in methods:
      r = rows[(size, name)]
      print(f"  {name:<10} {r['qps']:>10.0f} q/s (batch {args.batch})   "
            f"p50 {r['p50_ms']:8.2f} ms   p99 {r['p99_ms']:8.2f} ms (batch 1)", flush=True)
    # Free this size's index before the next is built (the lambdas above read these names).
    item_emb = tables = inverted = None

  sizes = sorted({s for s, _ in rows})
  if len(sizes) > 1:
    lo, hi = sizes[0], sizes[-1]
    print(f"\ncost ratio N={hi:,d} / N={lo:,d} (time per query; 1.0 = size-independent)")
    for name in ("beam", "beam+rank", "dense"):
      a, b = rows[(lo, name)], rows[(hi, name)]
      print(f"  {name:<10} batched {a['qps'] / b['qps']:7.2f}x   "
            f"single p50 {b['p50_ms'] / a['p50_ms']:7.2f}x")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="10000,100000,1000000")
  parser.add_argument("--codebooks", default="256,256,256")
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--beam", type=int, default=10)
  parser.add_argument("--k", type=int, default=10, help="items returned per query")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--reps", type=int, nargs=2, default=(50, 300),
                      metavar=("BATCHED", "SINGLE"), help="repetitions below 1M items")
  parser.add_argument("--reps_big", type=int, nargs=2, default=(30, 150),
                      metavar=("BATCHED", "SINGLE"), help="repetitions at 1M items and up")
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; jax {jax.__version__} on {device.platform} "
        f"({device.device_kind}); beam {args.beam}, d={args.dim}, "
        f"codebooks {args.codebooks}; load average {os.getloadavg()[0]:.1f} "
        "(other processes on a shared machine inflate p99)\n", flush=True)
  run(args)


if __name__ == "__main__":
  main()
