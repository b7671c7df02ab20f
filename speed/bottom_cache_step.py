"""A partly frozen encoder's train step and catalogue pass, from its cached bottom layers
(`encoder_cache.BottomCache`) against the uncached ones, in one process.

Reads a run's config, data and params (`--workdir`, read only; a run whose config freezes
the bottom `optim.freeze_encoder_layers` layers of a BERT-family encoder, e.g. the
benchmark's MiniLM default). Times, interleaved, the best of `--repeats`:
  - the jitted train step on one training batch of `train.global_batch_size`, from tokens
    and from the bottom layers' output (what `BottomCache.fill` puts in the batch);
  - a catalogue pass over `--items` items (k-means and each validation pass make one):
    the whole encoder (`run_setup.embed_items`) against the top layers over the cached
    bottom (`BottomCache.catalogue_embeddings`);
and, once, the bottom's build over the same items, which a run pays once. Prints the
machine, each time and the ratios.

  python speed/bottom_cache_step.py --workdir runs/scifact_minilm/dgi/main [--items 1024]
"""

import argparse
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from common import best_interleaved, machine_description  # noqa: E402

from dgi_jax import encoder_cache, optim, run_setup, train_step, trained_run  # noqa: E402
from dgi_jax.data import pipeline  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained run (read only)")
  parser.add_argument("--items", type=int, default=1024, help="catalogue items per pass")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  trained = trained_run.load_trained(args.workdir)
  model, params, config = trained.model, trained.params, trained.config
  num_layers = encoder_cache.frozen_bottom_layers(model, config)
  if num_layers <= 0:
    sys.exit(f"{args.workdir}: the run's encoder has no frozen bottom to cache "
             "(encoder_cache.frozen_bottom_layers)")
  run_data = trained.run_data
  batch = next(pipeline.make_train_iterator(
      run_data.dataset, run_data.tokenizer, config.data, int(config.train.global_batch_size),
      config.data.shuffle_seed, 0, 1, catalogue_tokens=run_data.catalogue_tokens))
  batch_size = 4 * int(config.eval.batch_size)  # As the cache's build batches.

  def bottom(tokens):
    return encoder_cache.encode_bottom_rows(model, params, tokens, num_layers, batch_size,
                                            np.float32)

  items = run_data.catalogue_tokens[:args.items]
  start = time.perf_counter()
  item_hidden, item_masks = bottom(items)
  build_seconds = time.perf_counter() - start
  no_requests = (np.zeros((0,) + item_hidden.shape[1:], np.float32),
                 np.zeros((0, item_hidden.shape[1]), bool))
  cache = encoder_cache.BottomCache(num_layers, item_hidden, item_masks, *no_requests)
  # The batch as `BottomCache.fill` gives it: the bottom's output in place of the tokens.
  cached_batch = {k: v for k, v in batch.items() if k not in ("query_tokens", "item_tokens")}
  cached_batch[train_step.ITEM_BOTTOM], cached_batch[train_step.ITEM_BOTTOM_MASK] = bottom(
      batch["item_tokens"])
  cached_batch[train_step.REQUEST_BOTTOM], cached_batch[train_step.REQUEST_BOTTOM_MASK] = (
      bottom(batch["query_tokens"]))

  optimizer = optim.make_optimizer(config.optim, int(config.train.num_steps))
  state = train_step.create_train_state(params, optimizer)
  step = jax.jit(train_step.make_train_step(model, optimizer, config,
                                            int(config.train.num_steps)))
  rng = jax.random.PRNGKey(0)
  item_batch = int(config.eval.item_batch_size)
  variants = {
      "step from tokens": lambda: jax.block_until_ready(step(state, batch, rng)),
      "step from the cached bottom": lambda: jax.block_until_ready(
          step(state, cached_batch, rng)),
      "catalogue pass, whole encoder": lambda: run_setup.embed_items(model, params, items,
                                                                     item_batch),
      "catalogue pass, top layers": lambda: cache.catalogue_embeddings(model, params,
                                                                        item_batch)}
  best = best_interleaved(variants, args.repeats)  # The first calls compile.

  print(machine_description())
  print(f"{args.workdir}: encoder {config.model.encoder}, {num_layers} of "
        f"{config.model.encoder_layers} layers frozen; batch {len(batch['example_id'])}, "
        f"items {batch['item_tokens'].shape[1]} tokens, requests "
        f"{batch['query_tokens'].shape[1]}; best of {args.repeats}")
  for name in variants:
    print(f"{name:>30}: {best[name] * 1000:9.1f} ms")
  print(f"step speed-up: {best['step from tokens'] / best['step from the cached bottom']:.2f}x")
  print(f"catalogue pass speed-up: {best['catalogue pass, whole encoder'] / best['catalogue pass, top layers']:.2f}x"
        f" ({len(items)} items; the bottom's build over them, once: {build_seconds:.1f} s)")


if __name__ == "__main__":
  main()
