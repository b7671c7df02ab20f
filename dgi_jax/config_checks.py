"""Config values a run cannot use, refused before anything is written.

Each check raises `errors.ConfigError` naming the field, its value and the rule. Without
them a non-positive step count trains nothing and exits 0, a zero interval divides by
zero mid-run, and a codebook larger than the catalogue leaves codes no item can take.
"""

import difflib
import math
import warnings
from typing import List, Sequence

from etils import epath

from dgi_jax.errors import ConfigError

# Fields that must be >= 1 and >= 0. A field a config lacks (an older or a narrower
# config, such as a benchmark's) is not checked.
POSITIVE = ("train.num_steps", "train.global_batch_size", "train.log_every",
            "train.checkpoint_every", "train.kmeans_iters", "train.kmeans_items",
            "data.vocab_size", "data.max_item_len", "data.max_query_len", "eval.beam_size",
            "eval.k", "eval.batch_size", "eval.item_batch_size",
            "eval.num_popularity_buckets", "train.history_refresh_every")
NON_NEGATIVE = ("train.eval_every", "data.max_history", "data.worker_count",
                "optim.warmup_steps", "optim.backbone_lr", "optim.quantizer_lr",
                "optim.decoder_lr", "eval.bucket_cap", "eval.candidate_level",
                "eval.candidate_budget")
PARALLELISM = ("jit", "pmap")
HISTORY_REPRS = ("text", "codes", "embedding")
ENCODER_CACHE_DTYPES = ("bfloat16", "float32")
# Orders of the beams' items (`decoding.rank_items`, `eval.ranking`).
RANKINGS = ("beam", "cosine", "blend", "sid")
# The rankings that add `eval.cosine_weight` x cosine to a decoder score.
WEIGHTED_RANKINGS = ("blend", "sid")


def describe_ranking(ranking: str, cosine_weight, exclude_history,
                     candidate_level: int = 0, sid_rerank_depth: int = 0,
                     candidate_budget: int = 0, popularity_weight=0.0) -> str:
  """The order of the beams' items in words, for reports and results tables; each weight
  is a number or words (a weight chosen per method), `exclude_history` a bool or words
  (a choice made per method)."""
  number = lambda w: f"{w:g}" if isinstance(w, (int, float)) else w  # noqa: E731
  weight = number(cosine_weight)
  words = {"beam": "beam score, then cosine (the paper's order)",
           "cosine": "cosine over the beams' items",
           "blend": f"beam score + {weight} x cosine",
           "sid": f"log P(whole SID) + {weight} x cosine"}[ranking]
  if popularity_weight:
    words += (f", each cosine plus {number(popularity_weight)} x ln(1 + the item's "
              "training popularity)")
  if ranking == "sid" and sid_rerank_depth:
    words += f" over the {sid_rerank_depth} candidates of highest cosine"
  if candidate_level:
    words += (f", the beams over the first {candidate_level} code(s) and every item under "
              "them a candidate")
  if candidate_budget:
    words += f", the fewest best beams holding at least {candidate_budget} items"
  if isinstance(exclude_history, str):
    return f"{words}, {exclude_history}"
  return words + (", the request's history items left out" if exclude_history else "")


SYNTHETIC = "synthetic"


def _value(config, path: str):
  """The value at dotted `path`, or None when the config lacks it."""
  node = config
  for part in path.split("."):
    if part not in node:
      return None
    node = node[part]
  return node


def check_values(config) -> None:
  """Refuses values no run can use: counts, intervals, codebooks, the dataset name."""
  for paths, low in ((POSITIVE, 1), (NON_NEGATIVE, 0)):
    for path in paths:
      value = _value(config, path)
      if value is not None and value < low:
        raise ConfigError(f"{path}={value}: must be >= {low}")
  sizes = _value(config, "model.codebook_sizes")
  if sizes is not None and (not sizes or any(k < 1 for k in sizes)):
    raise ConfigError(f"model.codebook_sizes={tuple(sizes)}: give one size >= 1 per level")
  parallelism = _value(config, "train.parallelism")
  if parallelism is not None and parallelism not in PARALLELISM:
    raise ConfigError(f"train.parallelism={parallelism!r}: expected one of {PARALLELISM}")
  history_repr = _value(config, "data.history_repr")
  if history_repr is not None and history_repr not in HISTORY_REPRS:
    raise ConfigError(f"data.history_repr={history_repr!r}: expected one of {HISTORY_REPRS}")
  if history_repr not in (None, "text") and not _value(config, "data.max_history"):
    raise ConfigError(f"data.history_repr={history_repr!r} reads history items but "
                      "data.max_history=0; give data.max_history >= 1")
  cache_dtype = _value(config, "train.encoder_cache_dtype")
  if cache_dtype is not None and cache_dtype not in ENCODER_CACHE_DTYPES:
    raise ConfigError(f"train.encoder_cache_dtype={cache_dtype!r}: expected one of "
                      f"{ENCODER_CACHE_DTYPES}")
  ranking = _value(config, "eval.ranking")
  if ranking is not None and ranking not in RANKINGS:
    raise ConfigError(f"eval.ranking={ranking!r}: expected one of {RANKINGS}")
  depth = _value(config, "eval.sid_rerank_depth")
  if depth is not None and depth < 0:
    raise ConfigError(f"eval.sid_rerank_depth={depth}: expected 0 (every candidate) or a "
                      "positive number of candidates")
  for field in ("eval.popularity_weight", "benchmark.popularity_weight_grid"):
    weights = _value(config, field)
    weights = (weights,) if isinstance(weights, (int, float)) else weights
    if weights is not None and not all(math.isfinite(w) and w >= 0 for w in weights):
      raise ConfigError(f"{field}={_value(config, field)!r}: expected weights >= 0 "
                        "(0: the cosine alone)")
  exclusion_grid = _value(config, "benchmark.exclude_history_grid")
  if exclusion_grid is not None and not all(isinstance(x, bool) for x in exclusion_grid):
    raise ConfigError(f"benchmark.exclude_history_grid={exclusion_grid!r}: expected True "
                      "and/or False (empty: eval.exclude_history)")
  candidate_level = _value(config, "eval.candidate_level")
  if sizes and candidate_level is not None:
    check_candidate_level("eval.candidate_level", candidate_level, len(sizes))
  dataset = _value(config, "data.dataset")
  if dataset is not None and dataset != SYNTHETIC and not epath.Path(dataset).is_dir():
    raise ConfigError(f"data.dataset={dataset!r}: no such directory (expected "
                      f"{SYNTHETIC!r} or a folder holding items.jsonl, train.jsonl, "
                      "valid.jsonl and test.jsonl)")


def check_candidate_level(name: str, value: int, num_levels: int) -> None:
  """Refuses a candidate level (`eval.candidate_level`, or the flag `name`) outside
  0 (the whole SID) .. num_levels."""
  if not 0 <= value <= num_levels:
    raise ConfigError(f"{name}={value}: the SIDs have {num_levels} codes; give 0 (the "
                      "whole SID) .. that")


def check_devices(config, device_count: int) -> None:
  """The global batch must split evenly over the devices."""
  batch = config.train.global_batch_size
  if batch % device_count:
    raise ConfigError(f"train.global_batch_size={batch} does not split over the "
                      f"{device_count} devices; use a multiple of {device_count}")


def check_catalogue(config, num_items: int, num_train: int) -> None:
  """Refuses codebooks larger than the catalogue and batches larger than the training
  split; warns when the codebooks cannot give every item its own SID."""
  sizes = tuple(config.model.codebook_sizes)
  for level, size in enumerate(sizes, start=1):
    if size > num_items:
      raise ConfigError(f"model.codebook_sizes={sizes}: level {level} has {size} codes, "
                        f"more than the catalogue's {num_items} items; use at most "
                        f"{num_items} codes per level")
  batch = config.train.global_batch_size
  if num_train < batch:
    raise ConfigError(f"train.global_batch_size={batch} is larger than the training "
                      f"split ({num_train} requests)")
  if math.prod(sizes) < num_items:
    warnings.warn(f"model.codebook_sizes={sizes} give {math.prod(sizes)} distinct SIDs "
                  f"for {num_items} items: at least {num_items - math.prod(sizes)} items "
                  "must share a SID")


def field_paths(config, prefix: str = "") -> List[str]:
  """Every dotted field path of a ConfigDict, sections included."""
  paths = []
  for key in config.keys():
    path = f"{prefix}{key}"
    paths.append(path)
    if hasattr(config[key], "keys"):
      paths += field_paths(config[key], f"{path}.")
  return paths


def unknown_field(config, overrides: Sequence[str]):
  """(path, close matches, the fields where it went wrong) of the first override path
  that `config` lacks; None when it has them all.

  Matches are sought one level at a time, where the path leaves the config: a mistyped
  section ('modle.d_model') suggests 'model.d_model', a mistyped field its siblings.
  """
  known = set(field_paths(config))
  for path in overrides:
    if path in known:
      continue
    parts, node, depth = path.split("."), config, 0
    while depth < len(parts) and hasattr(node, "keys") and parts[depth] in node:
      node, depth = node[parts[depth]], depth + 1
    prefix = "".join(f"{p}." for p in parts[:depth])
    siblings = sorted(node.keys()) if hasattr(node, "keys") else []
    close = difflib.get_close_matches(parts[depth], siblings, n=3, cutoff=0.6)
    matches = [prefix + ".".join([c, *parts[depth + 1:]]) for c in close]
    return path, [m for m in matches if m in known] or [prefix + c for c in close], [
        prefix + name for name in siblings]
  return None
