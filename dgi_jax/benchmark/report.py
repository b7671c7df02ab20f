"""results.md of a benchmark: Table-2 and Table-3 style tables, long tail, plots."""

import math
import pathlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dgi_jax import atomic_write
from dgi_jax import config_checks
from dgi_jax import plots
from dgi_jax.benchmark import methods as methods_lib

METRIC_COLUMNS = (("Hit@1", "hit@1"), ("Hit@5", "hit@5"), ("Hit@10", "hit@10"),
                  ("Hit@20", "hit@20"), ("R@1", "recall@1"), ("R@5", "recall@5"),
                  ("R@10", "recall@10"), ("R@20", "recall@20"), ("N@5", "ndcg@5"),
                  ("N@10", "ndcg@10"), ("N@20", "ndcg@20"), ("MRR@20", "mrr@20"))


def _num(x, digits: int = 4) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


def mean_and_standard_error(values: Sequence[float]) -> Tuple[float, float]:
  """The mean of `values` and its standard error: the sample standard deviation (n - 1 in
  the denominator) over sqrt(n); 0 for a single value."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return mean, 0.0
  variance = sum((x - mean) ** 2 for x in values) / (n - 1)
  return mean, math.sqrt(variance / n)


def _seed_cell(values: Sequence[float], digits: int = 4) -> str:
  mean, error = mean_and_standard_error(values)
  return f"{mean:.{digits}f} ± {error:.{digits}f}"


def _seeds_table(seeds: Dict[str, List[Dict[str, Any]]]) -> List[str]:
  """Mean ± standard error over the seeds of each method run with more than one."""
  rows = [runs for runs in seeds.values() if len(runs) > 1]
  if not rows:
    return []
  lines = ["## Over seeds: mean ± standard error", "",
           "Run k of a trained method adds k to train.seed (initialisation, k-means, Gumbel "
           "noise) and data.shuffle_seed (batch order); the tables above report run 0. "
           "Standard error: the sample standard deviation over sqrt(number of seeds).", "",
           "| method | seeds | Hit@10 | N@10 | B4 Hit@10 (tail) | unique SIDs "
           "| Hit@10 per seed |", "|---|---|---|---|---|---|---|"]
  for runs in rows:
    reports = [r["report"] for r in runs]
    indexes = [r["index"]["unique_sid_share"] for r in reports if r.get("index")]
    cells = [runs[0]["label"], str(len(runs)),
             _seed_cell([r["metrics"]["hit@10"] for r in reports]),
             _seed_cell([r["metrics"]["ndcg@10"] for r in reports]),
             _seed_cell([r["long_tail"]["buckets"][-1]["hit@10"] for r in reports], 3),
             _seed_cell(indexes, 3) if len(indexes) == len(reports) else "–",
             " / ".join(_num(r["metrics"]["hit@10"]) for r in reports)]
    lines.append("| " + " | ".join(cells) + " |")
  return lines + [""] + _against_seeds(seeds)


# The seeded method that single runs (ablations, baselines) are read against.
REFERENCE_METHOD = "dgi"


def _against_seeds(seeds: Dict[str, List[Dict[str, Any]]]) -> List[str]:
  """Each method with one finished run, its Hit@10 against the spread of full DGI's
  seeds: the difference from their mean, in their sample standard deviations (how far
  one run of a method lies from where one run of DGI falls)."""
  reference = seeds.get(REFERENCE_METHOD, [])
  values = [r["report"]["metrics"]["hit@10"] for r in reference]
  singles = [runs[0] for runs in seeds.values() if len(runs) == 1]
  if len(values) < 2 or not singles:
    return []
  mean, error = mean_and_standard_error(values)
  deviation = error * math.sqrt(len(values))
  lines = [f"Single runs against the {len(values)} seeds of {reference[0]['label']} "
           f"(Hit@10 {mean:.4f}, seed standard deviation {deviation:.4f}):", "",
           "| method | Hit@10 | minus the seeds' mean | in seed standard deviations |",
           "|---|---|---|---|"]
  for r in singles:
    hit = r["report"]["metrics"]["hit@10"]
    spread = f"{(hit - mean) / deviation:+.1f}" if deviation > 0 else "–"
    lines.append(f"| {r['label']} | {hit:.4f} | {hit - mean:+.4f} | {spread} |")
  return lines + [""]


def _metrics_table(results: Sequence[Dict[str, Any]]) -> List[str]:
  header = ["method"] + [c for c, _ in METRIC_COLUMNS] + ["train min"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in results:
    m = r["report"]["metrics"]
    cells = [r["label"]] + [_num(m.get(key)) for _, key in METRIC_COLUMNS]
    cells.append(f"{r['train_seconds'] / 60:.1f}")
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _long_tail_table(results: Sequence[Dict[str, Any]]) -> List[str]:
  first = results[0]["report"]["long_tail"]
  spans = [f"B{b['bucket']} (f {b['popularity_min']}–{b['popularity_max']})"
           for b in first["buckets"]]
  header = ["method"] + spans + ["unseen", "unique SIDs"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in results:
    tail = r["report"]["long_tail"]
    index = r["report"].get("index")
    cells = ([r["label"]] + [_num(b["hit@10"], 3) for b in tail["buckets"]]
             + [_num(tail["unseen"]["hit@10"], 3),
                "–" if index is None else f"{index['unique_sid_share']:.3f}"])
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _decoder_table(results: Sequence[Dict[str, Any]]) -> List[str]:
  """What each generative method's decoder learned, and where its encoder left requests."""
  rows = [r for r in results if r["report"].get("decoder")]
  if not rows:
    return []
  lines = ["## Decoder and encoder of the generative methods", "",
           "Decoder: teacher-forced cross-entropy (nats) of the relevant items' SIDs on the "
           "test split, per level, against the entropy of those codes; at level 1 the "
           "entropy is the best a decoder that ignores the request can do, so their gap "
           "(level-1 information) is what the request tells the decoder about the first "
           "code. Encoder alone: Hit@10 of the method's own encoder ranking the catalogue "
           "by cosine (no decoder), and the share of (request, item) pairs whose request "
           "vector quantizes to the item's SID prefix, per prefix length. Item spread: the "
           "mean cosine between two catalogue items (near 1: the item encoder has "
           "collapsed to one direction).", "",
           "| method | cross-entropy per level | code entropy per level "
           "| level-1 information | encoder alone Hit@10 | request on the item's SID prefix "
           "| item spread |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    decoder, encoder = r["report"]["decoder"], r["report"].get("encoder")
    cells = [r["label"],
             " / ".join(f"{x:.2f}" for x in decoder["code_cross_entropy"]),
             " / ".join(f"{x:.2f}" for x in decoder["target_code_entropy"]),
             f"{decoder['level1_information']:.2f}"]
    cells += (["–", "–", "–"] if encoder is None else
              [_num(encoder["dense"]["hit"]),
               " / ".join(f"{x:.3f}" for x in encoder["sid_prefix_agreement"]),
               # Results written before the spread was measured lack it: '–'.
               _num(encoder.get("item_mean_cosine"), 3)])
    lines.append("| " + " | ".join(cells) + " |")
  return lines + [""]


def _history_table(results: Sequence[Dict[str, Any]]) -> List[str]:
  """How each ranking treats the requests' own history items (`metrics.history_overlap`);
  nothing where no ranking holds one and no relevant item is one (e.g. no histories)."""
  rows = [r for r in results if r["report"].get("history")]
  if not any(r["report"]["history"]["ranked_in_history"]
             or r["report"]["history"]["relevant_in_history"] for r in rows):
    return []
  lines = ["## The requests' own history items", "",
           "Relevant: the share of (request, relevant item) pairs whose item is in the "
           "request's history. First: the share of requests whose ranking starts with one "
           "of its history items; per ranking: how many of its top k are. Where users do "
           "not come back to an item, every such slot is a miss "
           "(`eval.exclude_history` leaves them out).", "",
           "| method | relevant | first | per ranking |", "|---|---|---|---|"]
  for r in rows:
    h = r["report"]["history"]
    lines.append(f"| {r['label']} | {_num(h['relevant_in_history'], 3)} | "
                 f"{_num(h['first_in_history'], 3)} | {_num(h['ranked_in_history'], 2)} |")
  return lines + [""]


# The search weights a benchmark may choose per method on validation: (the report's key,
# the section's title).
_SELECTIONS = (("cosine_weight_selection", "Cosine weight of each ranking"),
               ("exclude_history_selection",
                "The requests' history items, left out of each ranking or kept"),
               ("popularity_weight_selection", "Popularity prior's weight of each ranking"))


def _grid_value(value) -> str:
  """A grid's value as results.md writes it: a weight as a number, the history choice
  (a bool, or 'true' / 'false' as a JSON key) in words."""
  if isinstance(value, bool) or value in ("true", "false"):
    return "left out" if value in (True, "true") else "kept"
  return f"{float(value):g}"


def _selection_lines(results: Sequence[Dict[str, Any]]) -> List[str]:
  """For each setting chosen per method on validation (`_SELECTIONS`): the value each
  method's ranking took, and its validation scores at every value of the grid."""
  lines = []
  for key, title in _SELECTIONS:
    rows = [r for r in results if key in r["report"]]
    if not rows:
      continue
    metric = rows[0]["report"][key]["metric"]
    lines += [f"## {title}, chosen on validation", "",
              f"Validation {metric} at each value of the grid; the test split is reported "
              "at the best (bold).", ""]
    for r in rows:
      selection = r["report"][key]
      chosen = _grid_value(selection["chosen"])
      cells = [(f"**{_grid_value(value)}: {score:.3f}**" if _grid_value(value) == chosen
                else f"{_grid_value(value)}: {score:.3f}")
               for value, score in selection["scores"].items()]
      lines.append(f"- {r['label']}: " + ", ".join(cells))
    lines.append("")
  return lines


def _encoder_words(config) -> str:
  """The encoder and the model width: scratch layers and d_model, or the pre-trained
  checkpoint (whose width every part of the model takes) and its frozen layers."""
  m = config.model
  if m.encoder == "scratch":
    return f"encoder {m.encoder_layers} + decoder {m.decoder_layers} layers, d_model {m.d_model}"
  checkpoint = "/".join(pathlib.PurePath(m.pretrained).parts[-2:])
  frozen = int(config.optim.freeze_encoder_layers)
  return (f"pre-trained {m.encoder} encoder .../{checkpoint}"
          + (f" ({frozen} lower layers frozen)" if frozen else "")
          + f" + decoder {m.decoder_layers} layers at its width")


def _budget(config) -> str:
  m, t, b, e = config.model, config.train, config.benchmark, config.eval
  weight = (e.cosine_weight if not tuple(b.get("cosine_weight_grid", ())) else
            "w (chosen per method on validation, below)")
  popularity_grid = tuple(b.get("popularity_weight_grid", ()))
  popularity_weight = (e.get("popularity_weight", 0.0) if not popularity_grid else
                       "v (chosen per method on validation, below)")
  exclude = (("the request's history items left out of every method's ranking or "
              "kept, as validation chooses per method (below)")
             if "exclude_history" in dict(methods_lib.validation_grids(config))
             else e.exclude_history)
  order = config_checks.describe_ranking(e.ranking, weight, exclude,
                                         e.candidate_level, e.get("sid_rerank_depth", 0),
                                         e.get("candidate_budget", 0), popularity_weight)
  selected = (f"the checkpoint with the best validation {t.best_metric} (scored every "
              f"{t.eval_every} steps)" if t.eval_every else "the final checkpoint")
  warmup = float(b.get("encoder_warmup_fraction", 0.0))
  split = (f"the first {warmup:.0%} train the encoder alone (InfoNCE) before k-means "
           "initialises the codebooks, then " if warmup else "")
  return (f"{t.num_steps} steps x global batch {t.global_batch_size} for every trained "
          f"method ({split}Two-Stage spends {b.two_stage_stage1_fraction:.0%} on the "
          f"quantizer and the rest on the retriever); {_encoder_words(config)}, codebooks "
          f"{tuple(m.codebook_sizes)}, request {config.data.max_query_len} tokens "
          f"(<= {config.data.max_history} history titles), item {config.data.max_item_len} "
          f"tokens; beam {e.beam_size}, the beams' items ranked by {order}; "
          + ("the zero-shot and dense rows' exact cosine adds the same prior; "
             if popularity_weight else "")
          + f"test split evaluated on {selected}.")


def write_results(dataset: str, config, finished: Dict[str, Dict[str, Any]], results_dir,
                  command: str,
                  seeds: Optional[Dict[str, List[Dict[str, Any]]]] = None) -> pathlib.Path:
  """Writes results.md and one long-tail PNG per finished method under `results_dir`.

  Args:
    dataset: the dataset's name, for titles.
    config: the benchmark config (budget description, reference numbers).
    finished: method name -> its result (see `runner.run_method`), run 0 of its seeds.
    results_dir: output folder.
    command: the command line that produced the results.
    seeds: method name -> its finished results over the seeds, run 0 first; methods with
      more than one get a row of mean ± standard error.
  """
  results_dir = pathlib.Path(results_dir)
  finished = {m.name: finished[m.name] for m in methods_lib.METHODS if m.name in finished}
  lines = [f"# Benchmark results: {dataset}", "",
           f"Command: `{command}`", ""]
  if finished:
    any_result = next(iter(finished.values()))
    report = any_result["report"]
    lines += [f"Machine: {any_result['machine']}", "",
              f"Test split: {report['num_requests']} requests, {report['num_pairs']} "
              "(request, relevant item) pairs; metrics are means over requests "
              "(Hit@K: any relevant item in the top K; R@K: share of relevant items in "
              "the top K; N@K: NDCG).", ""]
  lines += [f"Budget: {_budget(config)}", ""]
  if config.benchmark.reference:
    lines += [f"Published reference: {config.benchmark.reference}", ""]
  for title, names in (("Methods (the paper's Table 2)", methods_lib.TABLE_2),
                       ("Ablations (the paper's Table 3)", methods_lib.TABLE_3)):
    rows = [finished[n] for n in names if n in finished]
    lines += [f"## {title}", ""]
    lines += _metrics_table(rows) if rows else ["(no method finished yet)"]
    lines.append("")
  lines += _seeds_table({name: (seeds or {}).get(name, []) for name in finished})
  if finished:
    rows = list(finished.values())
    lines += ["## Long tail: Hit@10 by target popularity (B0 head .. B4 tail)", "",
              "Buckets hold equal numbers of (request, item) pairs, sorted by the item's "
              "training popularity f; 'unseen' = items never a training target.", ""]
    lines += _long_tail_table(rows) + [""]
    lines += _decoder_table(rows)
    lines += _history_table(rows)
    lines += _selection_lines(rows)
    for r in rows:
      png = plots.plot_popularity_buckets(
          r["report"]["long_tail"], results_dir / f"longtail_{r['method']}.png",
          title=f"{dataset}: {r['label']} — Hit@10 by popularity")
      lines.append(f"![{r['label']}]({png.name})")
    lines.append("")
  missing = [m.name for m in methods_lib.METHODS if m.name not in finished]
  if missing:
    lines += [f"Not run or not finished: {', '.join(missing)}.", ""]
  path = results_dir / "results.md"
  atomic_write.write_text(path, "\n".join(lines))
  return path
