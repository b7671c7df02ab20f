"""Serving latency of the real model: `Retriever.search` vs exact dense top-K, by catalogue size.

What a deployment runs, timed end to end on tokenized requests: request encoding +
constrained beam search + the run's ranking (`eval.ranking` and `eval.candidate_level`,
or --ranking / --candidate_level), i.e. `retrieval.Retriever.search`
(one jitted call, on the batch trimmed to its longest request as `search` trims it).
Beside it, in the same process and on the same (trimmed) requests, exact dense
retrieval with the same encoder: encode the request, cosine of z^_q with all N item
vectors, top-K. Two parts of the search are also timed alone to show where the time
goes: the request encoder, and encoding + beam search without the ranking.

With --old, the search as it was before is timed beside it, on the same requests: the
request states repeated once per beam before the decoder (so their cross-attention keys
and values are projected once per beam), the requests at their full padded width, and
the ranking's cosines from the candidates' gathered vectors ("search (old)", and
"enc+beam(old)" without the ranking).

Sizes: the catalogue's own ("native"), and synthetic catalogues (default 10k, 100k, 1M
items) of random SIDs drawn within the codebook sizes and random unit item vectors, indexed
with `dgi_jax.index` as the Retriever indexes (the native Retriever with its index
swapped). Requests are the test split's, tokenized as evaluation tokenizes them (history
item indices are taken modulo N at synthetic sizes).

Reported per size: requests/s at each batch size (median of repeated batches) and
single-request p50 / p99 latency (batch 1). Each function is called once on every batch
it is timed on before timing (compilation is excluded; a server would compile the few
trimmed widths at start-up) and every timed call blocks on its device results
(`jax.block_until_ready`). Then the time per request at the largest size over the
smallest synthetic one.

  python speed/serve_latency.py --workdir runs/mine            # a trained run (read only)
  python speed/serve_latency.py --workdir runs/mine --old      # ... and the old search
  python speed/serve_latency.py --workdir runs/mine --candidate_level 0  # whole SIDs
  python speed/serve_latency.py --config configs/tiny.py       # fresh params, trains nothing

`speed/search_latency.py` times the search algorithm alone (a toy MLP decoder, no
encoder) to show how it scales; this script times the deployed path.

Without --workdir the params are freshly initialised (nothing is trained): the ranking
quality is meaningless, the cost is the same. The config's dataset (the synthetic one by
default) and tokenizer are prepared in a temporary directory unless --tfds_dir is given.
"""

import argparse
import copy
import functools
import os
import pathlib
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from common import machine_description  # noqa: E402

from dgi_jax import config_checks, config_files, decoding, index, retrieval  # noqa: E402
from dgi_jax import run_setup  # noqa: E402
from dgi_jax import trained_run  # noqa: E402
from dgi_jax.data import pipeline  # noqa: E402
from dgi_jax.models import encoders, quantizer  # noqa: E402
from dgi_jax.models.dgi import DGIModel  # noqa: E402


# ------------------------------------------------------------------ the timed functions
@functools.partial(jax.jit, static_argnums=0)
def _encode(model: DGIModel, params, query_tokens, history, history_table):
  """The request encoder alone (states and z_q, as the search computes them)."""
  return model.apply({"params": params}, query_tokens, history, history_table,
                     method=DGIModel.encode_requests)


@functools.partial(jax.jit, static_argnames=("model", "beam_size", "repeat_states"))
def _encode_and_beam(model: DGIModel, params, tables, query_tokens, history, history_table,
                     *, beam_size: int, repeat_states: bool = False):
  """`retrieval._search` without the ranking: encoding + constrained beam search.

  `repeat_states`: the old formulation, the request's states repeated once per beam
  (`decoding.expand_to_beams`) and decoded one beam per row, which projects them to
  cross-attention keys and values once per beam.
  """
  apply = functools.partial(model.apply, {"params": params})
  request = apply(query_tokens, history, history_table, method=DGIModel.encode_requests)
  batch = query_tokens.shape[0]
  if repeat_states:
    rep = lambda x: decoding.expand_to_beams(x, beam_size)  # noqa: E731
    states, z_q, mask = rep(request.states), rep(request.z_q), rep(request.mask)
    fn = lambda level, prefix: apply(z_q, states, mask, prefix,  # noqa: E731
                                     method=DGIModel.prefix_logits)
  else:
    fn = retrieval.grouped_logits_fn(apply, request, batch, beam_size)
  return decoding.beam_search(fn, batch, beam_size, tables, model.cfg.codebook_sizes)


@functools.partial(jax.jit, static_argnames=("model", "beam_size", "k", "bucket_cap",
                                             "ranking", "cosine_weight"))
def _old_search(model: DGIModel, params, tables, inverted, item_emb, query_tokens, history,
                history_table, *, beam_size: int, k: int, bucket_cap: int, ranking: str,
                cosine_weight: float):
  """`retrieval._search` as it was before: the request's states repeated per beam (see
  `_encode_and_beam`'s `repeat_states`); the caller passes the untrimmed requests."""
  apply = functools.partial(model.apply, {"params": params})
  request = apply(query_tokens, history, history_table, method=DGIModel.encode_requests)
  rep = lambda x: decoding.expand_to_beams(x, beam_size)  # noqa: E731
  beam_states, beam_z_q, beam_mask = rep(request.states), rep(request.z_q), rep(request.mask)

  def tokens_to_logits(level, prefix):
    del level  # prefix_logits reads the level off the prefix length.
    return apply(beam_z_q, beam_states, beam_mask, prefix, method=DGIModel.prefix_logits)

  beams = decoding.beam_search(tokens_to_logits, query_tokens.shape[0], beam_size,
                               tables, model.cfg.codebook_sizes)
  items, beam_scores, cosines = decoding.rank_items(
      beams, inverted, quantizer.l2_normalize(request.z_q), item_emb, k, bucket_cap,
      ranking, cosine_weight, cosines_from="candidates")
  return retrieval.SearchResult(items=items, beam_scores=beam_scores, cosines=cosines,
                                beams=beams)


@functools.partial(jax.jit, static_argnames=("model", "k"))
def _dense(model: DGIModel, params, item_emb, query_tokens, history, history_table, *, k: int):
  """Exact dense retrieval with the same encoder: top-k cosine of z^_q with every item."""
  request = model.apply({"params": params}, query_tokens, history, history_table,
                        method=DGIModel.encode_requests)
  return jax.lax.top_k(quantizer.l2_normalize(request.z_q) @ item_emb.T, k)


# ------------------------------------------------------------------ set-up
def load(args, scratch):
  """(model, params, run_data, config, description) of --workdir or --config (whose data
  goes to `scratch` without --tfds_dir)."""
  if args.workdir:
    trained = trained_run.load_trained(args.workdir)
    return (trained.model, trained.params, trained.run_data, trained.config,
            f"trained run {args.workdir} (checkpoint {trained.step}, {trained.selected})")
  config = encoders.resolve_pretrained(config_files.load_file(args.config))
  if args.tfds_dir:
    with config.unlocked():
      config.data.tfds_dir = args.tfds_dir
  run_data = run_setup.prepare_run_data(config, scratch)
  model = run_setup.build_model(config)
  params = run_setup.init_params(model, config, jax.random.PRNGKey(0))
  return (model, params, run_data, config,
          f"{args.config} with freshly initialised params (untrained: the ranking quality "
          "is meaningless here, the cost is what a trained model of this shape costs)")


def request_pool(run_data, config, size: int):
  """(query tokens int32 [R, Lq], history int32 [R, H]) of up to `size` test requests,
  tiled to `size` rows when the split is smaller."""
  tokens, history = [], []
  for batch in pipeline.iterate_eval(run_data.dataset, run_data.tokenizer, config.data,
                                     "test", 256, catalogue_tokens=run_data.catalogue_tokens):
    tokens.append(batch["query_tokens"][batch["mask"]])
    history.append(batch["history"][batch["mask"]])
    if sum(len(t) for t in tokens) >= size:
      break
  tokens, history = np.concatenate(tokens), np.concatenate(history)
  reps = -(-size // len(tokens))
  return (np.tile(tokens, (reps, 1))[:size].astype(np.int32),
          np.tile(history, (reps, 1))[:size].astype(np.int32))


def synthetic_retriever(native: retrieval.Retriever, n: int, rng: np.random.Generator):
  """A shallow copy of `native` whose index holds `n` random SIDs (within the codebook
  sizes) and random unit item vectors, built as `Retriever._append` builds it."""
  cfg = native.model.cfg
  sids = np.stack([rng.integers(0, k, n) for k in cfg.codebook_sizes], axis=1).astype(np.int32)
  emb = rng.standard_normal((n, cfg.d_model), dtype=np.float32)
  emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
  r = copy.copy(native)
  r.sids, r.item_embeddings = sids, emb
  r.tables = index.build_prefix_tables(sids, cfg.codebook_sizes)
  r.inverted_index = index.build_inverted_index(sids)
  r.stats = index.collision_stats(sids, cfg.codebook_sizes)
  device = jax.local_devices()[0]
  r._device_embeddings = jax.device_put(emb, device)  # pylint: disable=protected-access
  r._device_history_table = (  # pylint: disable=protected-access
      jax.device_put(sids if cfg.history_repr == "codes" else emb, device)
      if cfg.history_items else None)
  return r


# ------------------------------------------------------------------ timing
def time_batches(fn, batches, reps: int) -> np.ndarray:
  """Seconds per call of `fn(*batch)` over `reps` calls cycling through `batches`, after
  one untimed call of each batch used (compilation: the search trims a batch to the
  width of its longest request, so batches of one size can differ in shape)."""
  for args in batches[:reps]:
    jax.block_until_ready(fn(*args))
  times = np.empty(reps)
  for i in range(reps):
    args = batches[i % len(batches)]
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times[i] = time.perf_counter() - start
  return times


def measure(methods, tokens, history, batch_sizes, reps_batched, reps_single):
  """{method: {"rps": {b: requests/s}, "p50_ms", "p99_ms"}} over the request pool."""
  out = {}
  for name, fn in methods.items():
    row = {"rps": {}}
    for b in batch_sizes:
      batches = [(tokens[i:i + b], history[i:i + b])
                 for i in range(0, len(tokens) - b + 1, b)]
      row["rps"][b] = b / np.median(time_batches(fn, batches, reps_batched))
    singles = [(tokens[i:i + 1], history[i:i + 1]) for i in range(min(len(tokens), 512))]
    single = time_batches(fn, singles, reps_single)
    row["p50_ms"], row["p99_ms"] = 1e3 * np.percentile(single, [50, 99])
    out[name] = row
  return out


def old_search(r: retrieval.Retriever, tokens, history, beam: int, k: int):
  """The search as it was before (`_old_search`) at `r`'s index, untrimmed requests."""
  bucket_cap = r._bucket_cap  # pylint: disable=protected-access
  return _old_search(r.model, r.params, r.tables, r.inverted_index,
                     r.device_item_embeddings, jnp.asarray(tokens), *r.history_args(history),
                     beam_size=beam, k=k, bucket_cap=bucket_cap, ranking=r.ranking,
                     cosine_weight=r.cosine_weight)


def methods_of(r: retrieval.Retriever, beam: int, k: int, parts: bool, old: bool):
  """The timed callables `(tokens, history) -> device arrays` at retriever `r`'s index.
  The search, its parts and the dense top-K run on the batch as `search` trims it
  (`search_inputs`); `old` adds the search as it was before."""
  methods = {
      "search": lambda t, h: r.search(t, beam, k, h),
      "dense": lambda t, h: _dense(r.model, r.params, r.device_item_embeddings,
                                   *r.search_inputs(t, h), k=k),
  }
  if old:
    methods["search (old)"] = lambda t, h: old_search(r, t, h, beam, k)
  if parts:
    methods["encode"] = lambda t, h: _encode(r.model, r.params, *r.search_inputs(t, h))
    methods["encode+beam"] = lambda t, h: _encode_and_beam(
        r.model, r.params, r.tables, *r.search_inputs(t, h), beam_size=beam)
    if old:
      methods["enc+beam(old)"] = lambda t, h: _encode_and_beam(
          r.model, r.params, r.tables, jnp.asarray(t), *r.history_args(h), beam_size=beam,
          repeat_states=True)
  return methods


def xla_flops_per_request(r: retrieval.Retriever, tokens, history, beam: int, k: int):
  """{part: XLA's estimated FLOPs per request} of the encoder, encoder + beam search and
  dense retrieval (on the batch trimmed as `search` trims it), and of the encoder and the
  old encoder + beam search (full width, states repeated per beam), at batch len(tokens)
  (compiled, not run)."""
  t, extra = jnp.asarray(tokens), r.history_args(history)
  trimmed = r.search_inputs(tokens, history)
  lowered = {
      "encode": _encode.lower(r.model, r.params, *trimmed),
      "encode+beam": _encode_and_beam.lower(r.model, r.params, r.tables, *trimmed,
                                            beam_size=beam),
      "encode (full width)": _encode.lower(r.model, r.params, t, *extra),
      "encode+beam (old)": _encode_and_beam.lower(r.model, r.params, r.tables, t, *extra,
                                                  beam_size=beam, repeat_states=True),
      "dense": _dense.lower(r.model, r.params, r.device_item_embeddings, *trimmed, k=k),
  }
  out = {}
  for name, low in lowered.items():
    cost = low.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out[name] = float((cost or {}).get("flops", float("nan"))) / len(tokens)
  return out


def trimmed_widths(r: retrieval.Retriever, tokens, history, batch: int) -> list:
  """Positions per request (tokens + history items) of each batch of `batch` requests
  as `r.search` trims it."""
  widths = []
  for i in range(0, len(tokens) - batch + 1, batch):
    t, h, _ = r.search_inputs(tokens[i:i + batch], history[i:i + batch])
    widths.append(t.shape[1] + (h.shape[1] if h is not None else 0))
  return widths


def print_rows(label, stats, results, batch_sizes):
  print(f"{label}: {stats['num_items']:,d} items, {stats['num_distinct_sids']:,d} distinct "
        f"SIDs, largest bucket {stats['max_bucket_size']:,d}", flush=True)
  for name, row in results.items():
    rps = "  ".join(f"{row['rps'][b]:>9,.0f} req/s (batch {b})" for b in batch_sizes)
    print(f"  {name:<14}{rps}   p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms "
          "(batch 1)", flush=True)


def run(args, scratch):
  start = time.perf_counter()
  model, params, run_data, config, what = load(args, scratch)
  batch_sizes = [int(b) for b in args.batches.split(",")]
  with config.unlocked():
    for field in ("bucket_cap", "candidate_level", "ranking"):
      if getattr(args, field) is not None:
        config.eval[field] = getattr(args, field)
  bucket_cap = config.eval.bucket_cap
  config_checks.check_candidate_level("--candidate_level", config.eval.candidate_level,
                                      len(config.model.codebook_sizes))
  if args.old and config.eval.candidate_level:
    raise config_checks.ConfigError("--old times the search of whole SIDs; drop it or "
                                    "give --candidate_level=0")
  if args.old and config.eval.ranking == "sid":
    raise config_checks.ConfigError("--old predates --ranking sid; drop it or give "
                                    "another --ranking")
  native = retrieval.Retriever(model, params, run_data, config)
  order = config_checks.describe_ranking(native.ranking, native.cosine_weight, False,
                                         native.candidate_level, native.sid_rerank_depth)
  cfg = model.cfg
  tokens, history = request_pool(run_data, config, max(512, max(batch_sizes)))
  print(f"machine: {machine_description()}; load average "
        f"{os.getloadavg()[0]:.1f} (other processes inflate p99)")
  print(f"model: {what}")
  print(f"d={cfg.d_model}, encoder {cfg.encoder_layers} / decoder {cfg.decoder_layers} "
        f"layers, codebooks {tuple(cfg.codebook_sizes)}, requests of {tokens.shape[1]} "
        f"tokens (+ {history.shape[1]} history items as "
        f"{'text' if not cfg.history_items else cfg.history_repr}); beam {args.beam}, "
        f"top {args.k}, bucket_cap {bucket_cap or 'none'}; ranking: {order}; "
        f"set-up {time.perf_counter() - start:.0f} s", flush=True)
  pad_id = cfg.encoder_spec.pad_token_id if cfg.encoder_spec else 0
  real = (f"request positions, mean over requests: {np.mean(np.sum(tokens != pad_id, 1)):.1f}"
          f" real tokens of {tokens.shape[1]}")
  if cfg.history_items:
    real += f", {np.mean(np.sum(history >= 0, 1)):.1f} history items of {history.shape[1]}"
  print(real)
  memory = tokens.shape[1] + (history.shape[1] if cfg.history_items else 0)
  print(f"positions encoded and cross-attended per request, of {memory} at full width "
        "(the search trims each batch to its longest request, bucketed), mean over "
        "batches of: " + ", ".join(
            f"{b}: {np.mean(trimmed_widths(native, tokens, history, b)):.1f}"
            for b in [1, *batch_sizes]), flush=True)
  flops = xla_flops_per_request(native, tokens[:64], history[:64], args.beam, args.k)
  trimmed = trimmed_widths(native, tokens[:64], history[:64], 64)[0]
  # flax attention projects its keys and values inside every call. With the states
  # repeated per beam (the old search) the decoder projects them once per beam and layer
  # (XLA shares them across the levels, which the FLOPs at beam 1 and 10 agree with); with
  # the beams of a request as one group, once per request and layer.
  kv_old = 2 * args.beam * cfg.decoder_layers * memory * 2 * cfg.d_model**2
  kv_new = 2 * cfg.decoder_layers * trimmed * 2 * cfg.d_model**2
  old_beam = flops["encode+beam (old)"] - flops["encode (full width)"]
  new_beam = flops["encode+beam"] - flops["encode"]
  print(f"XLA FLOPs per request (batch 64, native index), search: encode "
        f"{flops['encode'] / 1e6:.1f} M + beam search {new_beam / 1e6:.1f} M (of which "
        f"~{kv_new / 1e6:.1f} M cross-attention keys/values of the {trimmed} trimmed "
        f"request states, once per request); old search: encode "
        f"{flops['encode (full width)'] / 1e6:.1f} M + beam search {old_beam / 1e6:.1f} M "
        f"(~{kv_old / 1e6:.1f} M keys/values of {memory} states, once per beam); "
        f"dense top-K {flops['dense'] / 1e6:.1f} M (encode included)\n", flush=True)
  rng = np.random.default_rng(0)
  results = {}
  for size in args.sizes.split(","):
    big = size != "native" and int(size) >= 1_000_000
    reps = (args.reps_big if big else args.reps)
    if size == "native":
      r, n = native, native.num_items
    else:
      n = int(size)
      r = synthetic_retriever(native, n, rng)
    h = np.where(history >= 0, history % n, -1).astype(np.int32)
    results[n] = measure(methods_of(r, args.beam, args.k, parts=not args.no_parts,
                                    old=args.old), tokens, h, batch_sizes, *reps)
    print_rows("native catalogue" if size == "native" else "synthetic", r.stats,
               results[n], batch_sizes)
    del r
  synthetic = sorted(int(s) for s in args.sizes.split(",") if s != "native")
  if len(synthetic) > 1:
    lo, hi = synthetic[0], synthetic[-1]
    print(f"\ntime per request at N={hi:,d} / N={lo:,d} (1.00 = independent of N)")
    for name in results[lo]:
      a, b = results[lo][name], results[hi][name]
      batched = "  ".join(f"batch {s}: {a['rps'][s] / b['rps'][s]:5.2f}x" for s in batch_sizes)
      print(f"  {name:<14}{batched}   batch 1 p50: {b['p50_ms'] / a['p50_ms']:5.2f}x")
  print(f"\ntotal {time.perf_counter() - start:.0f} s")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="a trained run's work directory (read only)")
  source.add_argument("--config", help="a config file: fresh params, nothing trained")
  parser.add_argument("--tfds_dir", help="with --config: where the dataset is prepared "
                      "(default: a temporary directory, removed at the end)")
  parser.add_argument("--sizes", default="native,10000,100000,1000000",
                      help="catalogue sizes; 'native' is the run's own catalogue")
  parser.add_argument("--beam", type=int, default=10)
  parser.add_argument("--k", type=int, default=10, help="items returned per request")
  parser.add_argument("--batches", default="64,256", help="batch sizes for requests/s")
  parser.add_argument("--bucket_cap", type=int, default=None,
                      help="override eval.bucket_cap (items ranked per SID; 0 = all)")
  parser.add_argument("--candidate_level", type=int, default=None,
                      help="override eval.candidate_level (0: the beams' SIDs; t: every "
                      "item under the beams' t-code prefixes)")
  parser.add_argument("--ranking", choices=config_checks.RANKINGS, default=None,
                      help="override eval.ranking")
  parser.add_argument("--reps", type=int, nargs=2, default=(5, 100),
                      metavar=("BATCHED", "SINGLE"), help="timed calls below 1M items")
  parser.add_argument("--reps_big", type=int, nargs=2, default=(3, 100),
                      metavar=("BATCHED", "SINGLE"), help="timed calls at 1M items and up")
  parser.add_argument("--old", action="store_true",
                      help="also time the search as it was before (states repeated per "
                      "beam, requests at full width)")
  parser.add_argument("--no_parts", action="store_true",
                      help="skip timing the encoder and encoder + beam search alone")
  tfds.disable_progress_bar()
  # Without --workdir the config's dataset is prepared here (only that, then removed).
  scratch = tempfile.mkdtemp(prefix="serve_latency_")
  try:
    run(parser.parse_args(), scratch)
  except config_checks.ConfigError as e:
    sys.exit(f"serve_latency.py: {e}")  # One line, exit status 1.
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  main()
