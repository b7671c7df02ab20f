"""The frozen encoder's cache build: request encoding shortest first, cut to each batch's
width (`encoder_cache.encode_request_rows`), against the same requests in file order at
the full `data.max_query_len` width, in one process.

Reads a run's config, data and params (`--workdir`, read only; the params do not change
the cost) and encodes `--requests` training requests (the first by example id; all with
0) both ways, each once untimed to compile its widths, then timed in turn `--repeats`
times (the best of each). Prints the machine, the padding share of the encoded token
columns in either order, requests/s and their ratio.

  python speed/encoder_cache_build.py --workdir runs/scifact_minilm/dgi [--requests 4096]
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from common import best_interleaved, machine_description  # noqa: E402

from dgi_jax import encoder_cache, run_setup, trained_run  # noqa: E402


def file_order(model, params, tokens: np.ndarray, batch_size: int) -> None:
  """The requests in batches of `batch_size` in row order, at full width, their outputs
  stored as `encoder_cache.encode_request_rows` stores them (float32)."""
  num_requests, width = tokens.shape
  states = np.zeros((num_requests, width, model.cfg.d_model), np.float32)
  vectors = np.zeros((num_requests, model.cfg.d_model), np.float32)
  masks = np.zeros((num_requests, width), bool)
  for start in range(0, num_requests, batch_size):
    batch = np.full((batch_size, width), model.cfg.pad_token_id, np.int32)
    rows = tokens[start:start + batch_size]
    batch[:len(rows)] = rows
    s, z, m = jax.device_get(run_setup.encode_requests(model, params, jnp.asarray(batch)))
    states[start:start + len(rows)] = s[:len(rows)]
    vectors[start:start + len(rows)] = z[:len(rows)]
    masks[start:start + len(rows)] = m[:len(rows)]


def padding_shares(model, tokens: np.ndarray, batch_size: int):
  """(share of padding in file order at full width, share in the cache's order)."""
  real = int((tokens != model.cfg.pad_token_id).sum())
  full = -(-len(tokens) // batch_size) * batch_size * tokens.shape[1]
  trimmed = sum(batch_size * batch.shape[1] for _, batch in
                encoder_cache.request_batches(model.cfg, tokens, batch_size))
  return 1 - real / full, 1 - real / trimmed


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained run (read only)")
  parser.add_argument("--requests", type=int, default=4096,
                      help="training requests encoded (0: all)")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  trained = trained_run.load_trained(args.workdir)
  model, params, config = trained.model, trained.params, trained.config
  batch_size = 4 * int(config.eval.batch_size)  # As `encoder_cache.build` batches.
  tokens = encoder_cache.training_request_tokens(trained.run_data, config, batch_size)
  if args.requests:
    tokens = tokens[:args.requests]
  print(machine_description())
  print(f"{len(tokens)} training requests of {args.workdir}, width {tokens.shape[1]}, "
        f"batches of {batch_size}, encoder {config.model.encoder}")
  before, after = padding_shares(model, tokens, batch_size)
  print(f"padding share of the encoded columns: file order {before:.1%}, "
        f"shortest first {after:.1%}")
  variants = {
      "file order, full width": lambda: file_order(model, params, tokens, batch_size),
      "shortest first, trimmed": lambda: encoder_cache.encode_request_rows(
          model, params, tokens, batch_size)}
  best = best_interleaved(variants, args.repeats)  # The first calls compile.
  for name in variants:
    print(f"{name:>24}: {len(tokens) / best[name]:8.1f} requests/s (best of {args.repeats})")
  ratio = best["file order, full width"] / best["shortest first, trimmed"]
  print(f"speed-up: {ratio:.2f}x")


if __name__ == "__main__":
  main()
