"""Evaluation of a trained retriever on a request split: ranking metrics, long tail, hubness.

`evaluate_split` runs the constrained search over every request of a split and reports
(DGI_METHOD.md, "Metrics" and "Long-tail protocol"):
  metrics    Hit@{1,5,10,20}, NDCG@K, Recall@K (several relevant items), MRR@20, as
             means over requests (sums plus a count, divided once).
  long_tail  Hit@10 of (request, relevant item) pairs in five equal-count buckets by the
             item's training popularity, B0 head .. B4 tail, and of unseen items apart.
  history    how often a relevant item is one of the request's own history items, and
             how often the ranking puts one of them first (`metrics.history_overlap`):
             where the first is rare and the second common, `eval.exclude_history` pays.
  hubness    Spearman correlation of the raw item-embedding norm with item popularity,
             and of each level's codeword norm with its code popularity (summed f(i)).
  index      code-usage perplexity per level, unique-SID share, bucket sizes.
  decoder,   the diagnostics of `diagnostics.py` (the decoder's cross-entropy of the
  encoder    relevant items' SIDs, the encoder's own cosine ranking and SID prefixes,
             the items' spread),
             unless `with_diagnostics` is False (validation during training:
             `eval.validation_diagnostics`); one jitted pass per batch beside the search.

`sweep_split` gives the same report (without the diagnostics) at several weights of one
search weight, ranking one search's beams at each (its timing is the whole sweep's);
`choose_on_validation` picks a weight from it. `make_validation_fn` gives
`train.train_and_evaluate` its `evaluate_fn`. With several processes every process
evaluates the whole split on its own local device (same data, same result): simple, and
the split is small next to training.
"""

import json
import math
import pathlib
import time
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dgi_jax import atomic_write
from dgi_jax import config_checks
from dgi_jax import diagnostics
from dgi_jax import metrics
from dgi_jax import plots
from dgi_jax import retrieval
from dgi_jax import run_setup
from dgi_jax import trained_run
from dgi_jax.data import pipeline
from dgi_jax.models import encoders
from dgi_jax.models.dgi import DGIModel

LONG_TAIL_K = 10  # Figure 4 reports Hit@10 per bucket.


def hubness(retriever: retrieval.Retriever, popularity: np.ndarray) -> Dict[str, Any]:
  """Spearman correlations of item and codeword norms with training popularity.

  Only the first `len(popularity)` items (the training catalogue) take part.
  """
  n = len(popularity)
  codebooks = retriever.model.apply({"params": retriever.params},
                                    method=DGIModel.get_codebooks)
  codeword = []
  for level, codebook in enumerate(codebooks):
    code_popularity = metrics.codeword_popularity(retriever.sids[:n, level], popularity,
                                                  codebook.shape[0])
    codeword.append(metrics.norm_popularity_correlation(np.asarray(codebook),
                                                        code_popularity))
  return {"item_norm_spearman": metrics.spearman(retriever.item_norms[:n], popularity),
          "codeword_norm_spearman": codeword}


def evaluate_split(retriever: retrieval.Retriever, run_data: run_setup.RunData, config,
                   split: str, beam_size: Optional[int] = None, k: Optional[int] = None,
                   keep_rankings: bool = False, with_diagnostics: bool = True
                   ) -> Dict[str, Any]:
  """Searches every request of `split` and reports metrics (see the module doc).

  Args:
    retriever: The index and search of a trained model.
    run_data: The run's dataset, tokenizer and catalogue tokens.
    config: The full config (`data`, `eval`).
    split: 'validation' or 'test'.
    beam_size: Beams of the search; default `config.eval.beam_size`.
    k: Items ranked per request; default `config.eval.k`. Metrics @K > k are left out.
    keep_rankings: Also return 'rankings', int [Q, k] item indices per request in split
      order (not JSON-serialisable).
    with_diagnostics: Also report the decoder and encoder diagnostics.

  Returns:
    A JSON-ready dict: split, beam_size, k, num_requests, num_pairs, metrics, long_tail,
    history, hubness, index, candidates (mean items ranked per request, that mean's share
    of the catalogue, and recall: the share of (request, relevant item) pairs whose item
    is among them, the ceiling of every Hit@K), decoder and encoder (with diagnostics),
    timing (seconds, requests_per_sec; the search with the diagnostics).
  """
  (report,) = _evaluate(retriever, run_data, config, split, beam_size, k, keep_rankings,
                        with_diagnostics, attribute=None, weights=(None,))
  return report


# The ranking settings a sweep may vary: neither changes the beams. The weights are
# traced arguments of the ranking; leaving the history out is one more compilation.
SWEPT_SETTINGS = {"cosine_weight": float, "popularity_weight": float, "exclude_history": bool}


def sweep_split(retriever: retrieval.Retriever, run_data: run_setup.RunData, config,
                split: str, attribute: str, weights: Sequence[Any]
                ) -> Dict[Any, Dict[str, Any]]:
  """`evaluate_split`'s report (without diagnostics) at each of `weights` of the ranking
  setting `attribute` (`SWEPT_SETTINGS`: 'cosine_weight', 'popularity_weight' or
  'exclude_history'): value -> report. No setting changes the beams, so each batch is
  encoded and searched once and its beams ranked at every value. Leaves `retriever`'s
  attribute at the last value."""
  values = [SWEPT_SETTINGS[attribute](w) for w in weights]
  reports = _evaluate(retriever, run_data, config, split, None, None, False, False,
                      attribute=attribute, weights=values)
  return dict(zip(values, reports))


def _evaluate(retriever: retrieval.Retriever, run_data: run_setup.RunData, config,
              split: str, beam_size: Optional[int], k: Optional[int], keep_rankings: bool,
              with_diagnostics: bool, attribute: Optional[str],
              weights: Sequence[Optional[float]]):
  """`evaluate_split`'s reports, one per weight of `attribute` (None: as it stands)."""
  beam_size = int(beam_size or config.eval.beam_size)
  k = int(k or config.eval.k)

  def set_weight(weight):
    if attribute is not None:
      setattr(retriever, attribute, weight)

  start = time.perf_counter()
  ranked = [[] for _ in weights]
  relevant, history, candidates, found, parts = [], [], [], [], []
  item_first_codes = jnp.asarray(retriever.sids[:, 0])  # For the routed diagnostic.
  batches = pipeline.iterate_eval(run_data.dataset, run_data.tokenizer, config.data,
                                  split, int(config.eval.batch_size),
                                  catalogue_tokens=run_data.catalogue_tokens)
  for batch in batches:
    # Encoded once for the search and the diagnostics, searched once for every weight.
    request = retriever.encode(batch["query_tokens"], batch["history"])
    beams = retriever.search_beams(request, beam_size)
    for rankings, weight in zip(ranked, weights):
      set_weight(weight)
      result = retriever.rank_beams(request, beams, k, batch["history"])
      rankings.append(np.asarray(result.items)[batch["mask"]])
    relevant.append(batch["relevant"][batch["mask"]])
    history.append(batch["history"][batch["mask"]])
    candidates.append(retriever.candidate_counts(beams)[batch["mask"]])
    found.append(retriever.under_beams(beams, batch["relevant"])[batch["mask"]])
    if with_diagnostics:
      parts.append(_batch_diagnostics(retriever, batch, request, item_first_codes,
                                      beam_size))
  seconds = time.perf_counter() - start
  relevant, history = np.concatenate(relevant), np.concatenate(history)
  mean_candidates = float(np.concatenate(candidates).mean())
  shared = dict(hubness=hubness(retriever, run_data.dataset.train_popularity),
                index=dict(retriever.stats),
                candidates={"mean": mean_candidates,
                            "catalogue_share": mean_candidates / retriever.num_items,
                            "recall": float(np.concatenate(found).sum()
                                            / (relevant >= 0).sum())})
  if with_diagnostics:
    (dense_ranked, cross_entropy, target_sids, agreement, routed_ranked, routed_candidates,
     routed_found) = (np.concatenate(p) for p in zip(*parts))
    shared["decoder"] = diagnostics.decoder_report(cross_entropy, target_sids,
                                                   retriever.model.cfg.codebook_sizes)
    shared["encoder"] = diagnostics.encoder_report(dense_ranked, relevant, agreement,
                                                   routed_ranked, routed_candidates,
                                                   routed_found, retriever.item_embeddings)
  reports = []
  for rankings, weight in zip(ranked, weights):
    set_weight(weight)
    rankings = np.concatenate(rankings)
    report = dict(split=split, beam_size=beam_size, k=k, ranking=retriever.ranking,
                  exclude_history=retriever.exclude_history,
                  candidate_level=retriever.candidate_level,
                  candidate_budget=retriever.candidate_budget)
    if retriever.ranking in config_checks.WEIGHTED_RANKINGS:
      report["cosine_weight"] = retriever.cosine_weight
    if retriever.ranking == "sid":
      report["sid_rerank_depth"] = retriever.sid_rerank_depth
    report["popularity_weight"] = retriever.popularity_weight
    report.update(ranking_report(rankings, relevant, run_data.dataset.train_popularity,
                                 int(config.eval.num_popularity_buckets), history))
    report.update(shared)
    report["timing"] = {"seconds": seconds, "requests_per_sec": len(rankings) / seconds}
    if keep_rankings:
      report["rankings"] = rankings
    reports.append(report)
  return reports


def _batch_diagnostics(retriever: retrieval.Retriever, batch, request,
                       item_first_codes: jax.Array, route_width: int):
  """(dense ranking [B', 10] of the real requests, then per (request, relevant item)
  pair, relevant column by column: cross-entropy [P, m], the item's SID [P, m], SID
  prefix agreement [P, m]; then the routed ranking [B', 10], its candidate count [B'] and
  per pair whether the item is under the routed codes [P]) of one eval batch, from one
  `diagnostics.diagnose` call on the batch's encoded `request`, routing through
  `route_width` of the items' first codes `item_first_codes` [N], on the device, with the
  search's candidate budget)."""
  relevant = batch["relevant"]  # [B, R], -1 padded.
  out = jax.device_get(diagnostics.diagnose(
      retriever.model, retriever.params, retriever.device_item_embeddings,
      item_first_codes, request,
      jnp.asarray(retriever.sids[np.maximum(relevant, 0)]),
      retriever.excluded_items(batch["history"]), retriever.item_prior(),
      route_width=route_width,
      route_budget=retriever.candidate_budget))
  pairs = (batch["mask"][:, None] & (relevant >= 0)).T  # [R, B]
  target_sids = retriever.sids[relevant.T[pairs]]
  request_codes = np.broadcast_to(out.request_codes, pairs.shape + target_sids.shape[1:])
  routed_codes = np.broadcast_to(out.routed_codes, pairs.shape + out.routed_codes.shape[1:])
  return (out.dense_top_k[batch["mask"]],
          out.code_cross_entropy.transpose(1, 0, 2)[pairs], target_sids,
          np.cumprod(request_codes[pairs] == target_sids, axis=1),
          out.routed_top_k[batch["mask"]], out.routed_candidates[batch["mask"]],
          np.any(routed_codes[pairs] == target_sids[:, :1], axis=1))


def ranking_report(ranked: np.ndarray, relevant: np.ndarray, train_popularity: np.ndarray,
                   num_buckets: int, history: Optional[np.ndarray] = None
                   ) -> Dict[str, Any]:
  """Metrics and long-tail profile of any retriever's rankings of one split.

  Args:
    ranked: int [Q, k] item indices per request, best first (-1 = no item).
    relevant: int [Q, R] relevant item indices per request, padded with -1.
    train_popularity: int [num_items] training requests per item, f(i).
    num_buckets: popularity buckets of the long-tail profile.
    history: int [Q, H] the requests' history items (-1 padded), or None.

  Returns:
    num_requests, num_pairs, metrics (@K for K <= k, MRR@min(20, k)), long_tail and,
    with `history`, history (`metrics.history_overlap`).
  """
  k = ranked.shape[1]
  ks = tuple(x for x in metrics.DEFAULT_KS if x <= k)
  means = metrics.retrieval_metrics(ranked, relevant, ks, min(metrics.MRR_K, k))
  num_requests = int(means.pop(metrics.COUNT_KEY))
  pair_popularity, pair_hits = metrics.pair_hits(ranked, relevant, train_popularity,
                                                 LONG_TAIL_K)
  long_tail = metrics.popularity_buckets(pair_popularity, pair_hits, num_buckets)
  report = {"num_requests": num_requests, "num_pairs": int(len(pair_popularity)),
            "metrics": means, "long_tail": dict(k=LONG_TAIL_K, **long_tail)}
  if history is not None:
    report["history"] = metrics.history_overlap(ranked, relevant, history)
  return report


def flat_metrics(report: Dict[str, Any]) -> Dict[str, float]:
  """The scalar results of a report as one flat dict of finite floats (for training logs
  and checkpoint selection): the ranking metrics, tail and unseen Hit@10, unique-SID
  share and per-level code perplexity."""
  out = dict(report["metrics"])
  out["tail_hit@10"] = report["long_tail"]["buckets"][-1]["hit@10"]
  out["unseen_hit@10"] = report["long_tail"]["unseen"]["hit@10"]
  out["unique_sid_share"] = report["index"]["unique_sid_share"]
  out["candidates_per_request"] = report["candidates"]["mean"]
  out["candidate_recall"] = report["candidates"]["recall"]
  for level, value in enumerate(report["index"]["code_perplexity"]):
    out[f"code_perplexity_{level}"] = value
  if "decoder" in report:
    out["level1_information"] = report["decoder"]["level1_information"]
    out["encoder_dense_hit@10"] = report["encoder"]["dense"]["hit"]
    out["routed_hit@10"] = report["encoder"]["routed"]["hit"]
    out["item_mean_cosine"] = report["encoder"]["item_mean_cosine"]
  return {name: float(v) for name, v in out.items() if v is not None and math.isfinite(v)}


def choose_cosine_weight(retriever: retrieval.Retriever, run_data: run_setup.RunData, config,
                         weights: Sequence[float], split: str = "validation"
                         ) -> Dict[str, Any]:
  """Sets `retriever.cosine_weight` to the weight of `weights` whose ranking ('blend' or
  'sid') scores best on `split` (`choose_on_validation`)."""
  if retriever.ranking not in config_checks.WEIGHTED_RANKINGS:
    raise ValueError(f"ranking={retriever.ranking!r} has no cosine weight to choose")
  return choose_on_validation(retriever, run_data, config, "cosine_weight", weights, split)


def choose_on_validation(retriever: retrieval.Retriever, run_data: run_setup.RunData, config,
                         attribute: str, weights: Sequence[float],
                         split: str = "validation") -> Dict[str, Any]:
  """Sets the ranking setting `attribute` of `retriever` (`SWEPT_SETTINGS`: a weight, or
  whether the history is left out) to the one of `weights` whose search scores best on
  `split` by `config.train.best_metric` (ties: the first listed).

  The split is searched once and its beams ranked at each value (`sweep_split`).
  Returns {'split', 'metric', 'scores': {value: metric value}, 'chosen': value}.
  """
  metric = str(config.train.best_metric)
  reports = sweep_split(retriever, run_data, config, split, attribute, weights)
  selection = best_weight(split, metric, {weight: flat_metrics(report)[metric]
                                          for weight, report in reports.items()})
  setattr(retriever, attribute, selection["chosen"])
  return selection


def best_weight(split: str, metric: str, scores: Dict[float, float]) -> Dict[str, Any]:
  """The selection record of a validation sweep: {'split', 'metric', 'scores' (weight ->
  metric value, in the grid's order), 'chosen': the weight of the best score, the first
  listed of equal ones}."""
  return {"split": split, "metric": metric, "scores": scores,
          "chosen": max(scores, key=scores.get)}


def ranking_score(ranked: np.ndarray, relevant: np.ndarray, train_popularity, config) -> float:
  """`config.train.best_metric` of rankings `ranked` [Q, k] against `relevant` [Q, R]: the
  score a validation choice compares (`best_weight`)."""
  report = ranking_report(ranked, relevant, train_popularity,
                          int(config.eval.num_popularity_buckets))
  return float(report["metrics"][str(config.train.best_metric)])


def make_validation_fn(config, split: str = "validation") -> Callable[..., Dict[str, float]]:
  """`evaluate_fn(params, run_data, item_embeddings=None) -> {metric: float}` for
  `train.train_and_evaluate`.

  Each call indexes the catalogue with the current params (quantizing `item_embeddings`,
  float32 [N, d], when training already holds them), then evaluates `split`, with the
  diagnostics when `eval.validation_diagnostics`.
  """
  config = encoders.resolve_pretrained(config)  # As training resolves it.
  model = run_setup.build_model(config)

  def evaluate_fn(params, run_data: run_setup.RunData,
                  item_embeddings: Optional[np.ndarray] = None) -> Dict[str, float]:
    retriever = retrieval.Retriever(model, params, run_data, config, item_embeddings)
    return flat_metrics(evaluate_split(
        retriever, run_data, config, split,
        with_diagnostics=config.eval.validation_diagnostics))

  return evaluate_fn


# The `eval` fields `dgi eval` may change for one evaluation, as the search reads them
# (`Retriever` attributes of the same names).
SEARCH_OVERRIDES = ("ranking", "cosine_weight", "exclude_history", "candidate_level",
                    "sid_rerank_depth", "candidate_budget", "popularity_weight")


# The `dgi eval` flag of each `eval` field an evaluation may change, in the order an
# evaluation's name lists them.
_EVAL_FLAGS = {"beam_size": "beam", "k": "k", **{name: name for name in SEARCH_OVERRIDES}}


def evaluation_name(split: str, run_eval, settings: Dict[str, Any]) -> str:
  """`eval_<split>`, then each of `settings` ({eval field: value}, None = the run's own)
  that differs from the run's `eval` config `run_eval`, written as its `dgi eval` flag
  (`--beam 20 --exclude_history --popularity_weight 0.03` on a run searched at beam 10
  without them: 'eval_test_beam=20_exclude_history_popularity_weight=0.03'). A flag
  that repeats the run's own value leaves the name as it is."""
  parts = [f"eval_{split}"]
  for field, flag in _EVAL_FLAGS.items():
    if settings.get(field) is None:
      continue
    own = run_eval[field]
    value = type(own)(settings[field])
    if value == own:
      continue
    if isinstance(own, bool):
      parts.append(flag if value else f"no{flag}")
    else:
      parts.append(f"{flag}={value:g}" if isinstance(own, float) else f"{flag}={value}")
  return "_".join(parts)


def evaluate_workdir(workdir, split: str = "test", beam_size: Optional[int] = None,
                     k: Optional[int] = None, **search: Any):
  """`dgi eval`: evaluates a work directory's best (else latest) checkpoint on `split`.

  `beam_size` and `k` default to the checkpoint's `eval` config, and so does each field
  of SEARCH_OVERRIDES given as None or not at all in `search` (`ranking='cosine'`,
  `candidate_budget=500`, ...).

  Writes `<workdir>/<name>.json` and PNG figures under `<workdir>/plots/`, `name` from
  `evaluation_name`: an evaluation under other settings than the run's own is kept beside
  the others, not written over them.

  Returns:
    (report, step, 'best' | 'latest' | 'fallback', paths written).
  """
  unknown = sorted(set(search) - set(SEARCH_OVERRIDES))
  if unknown:
    raise TypeError(f"evaluate_workdir: unknown search options {unknown}")
  trained = trained_run.load_trained(workdir)  # Skips damaged checkpoints, with a warning.
  step, which = trained.step, trained.selected
  retriever = retrieval.Retriever(trained.model, trained.params, trained.run_data,
                                  trained.config)
  search = {name: value for name, value in search.items() if value is not None}
  if "candidate_level" in search:
    config_checks.check_candidate_level("--candidate_level", search["candidate_level"],
                                        trained.model.cfg.num_levels)
  for name, value in search.items():
    setattr(retriever, name, type(getattr(retriever, name))(value))
  report = evaluate_split(retriever, trained.run_data, trained.config, split, beam_size, k)
  report["checkpoint"] = {"step": int(step), "selected": which}
  name = evaluation_name(split, trained.config.eval,
                         {"beam_size": beam_size, "k": k, **search})
  workdir = pathlib.Path(workdir)
  paths = [write_report(report, workdir / f"{name}.json")]
  paths += plots.write_run_plots(report, workdir, workdir / "plots",
                                 name.removeprefix("eval_"))
  return report, step, which, paths


# ---------------------------------------------------------------------------- reports


def _json_ready(x):
  """NaN and inf become null (JSON has no such numbers); numpy scalars become Python."""
  if isinstance(x, dict):
    return {k: _json_ready(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_ready(v) for v in x]
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def write_report(report: Dict[str, Any], path) -> pathlib.Path:
  """Writes a report as JSON atomically (temporary file, then rename)."""
  ready = _json_ready({k: v for k, v in report.items() if k != "rankings"})
  return atomic_write.write_text(path, json.dumps(ready, indent=2) + "\n")


def _fmt(x) -> str:
  return "  n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def format_report(report: Dict[str, Any]) -> str:
  """A plain-text table of a report for the terminal."""
  m = report["metrics"]
  ks = [k for k in metrics.DEFAULT_KS if f"hit@{k}" in m]
  order = config_checks.describe_ranking(report["ranking"], report.get("cosine_weight", 0.0),
                                         report["exclude_history"],
                                         report.get("candidate_level", 0),
                                         report.get("sid_rerank_depth", 0),
                                         report.get("candidate_budget", 0),
                                         report.get("popularity_weight", 0.0))
  lines = [(f"{report['split']}: {report['num_requests']} requests, "
            f"{report['num_pairs']} (request, item) pairs, beam {report['beam_size']}, "
            f"top {report['k']} by {order}; "
            f"{report['timing']['seconds']:.1f} s "
            f"({report['timing']['requests_per_sec']:.0f} requests/s)"),
           "",
           "metric " + "".join(f"{'@' + str(k):>8}" for k in ks)]
  for name in ("hit", "ndcg", "recall"):
    lines.append(f"{name:<7}" + "".join(f"{_fmt(m[f'{name}@{k}']):>8}" for k in ks))
  mrr = [name for name in m if name.startswith("mrr@")]
  lines += [f"{name:<7}{_fmt(m[name]):>8}" for name in mrr]
  tail = report["long_tail"]
  lines += ["", (f"popularity buckets (hit@{tail['k']} of (request, item) pairs; "
                 "f = training requests of the item)"),
            f"{'bucket':<10}{'pairs':>7}{'f range':>14}{'hit@' + str(tail['k']):>9}"]
  for b in tail["buckets"]:
    span = ("" if b["popularity_min"] is None
            else f"{b['popularity_min']}-{b['popularity_max']}")
    lines.append(f"{'B' + str(b['bucket']):<10}{b['count']:>7}{span:>14}"
                 f"{_fmt(b['hit@10']):>9}")
  unseen = tail["unseen"]
  lines.append(f"{'unseen':<10}{unseen['count']:>7}{'0':>14}{_fmt(unseen['hit@10']):>9}")
  stats, hub = report["index"], report["hubness"]
  lines += ["",
            f"index: {stats['num_items']} items, {stats['num_distinct_sids']} distinct SIDs, "
            f"unique-SID share {stats['unique_sid_share']:.3f}, largest bucket "
            f"{stats['max_bucket_size']}, code perplexity per level "
            + " / ".join(f"{p:.1f}" for p in stats["code_perplexity"]),
            "hubness (Spearman with popularity): item norm "
            f"{_fmt(hub['item_norm_spearman'])}, codeword norm per level "
            + " / ".join(_fmt(c) for c in hub["codeword_norm_spearman"])]
  overlap = report.get("history")
  if overlap:
    lines.append(f"the requests' own history items: {_fmt(overlap['relevant_in_history'])} "
                 "of the relevant items; ranked first for "
                 f"{_fmt(overlap['first_in_history'])} of the requests, "
                 f"{_fmt(overlap['ranked_in_history'])} per ranking of {report['k']}")
  candidates = report["candidates"]
  lines.append(f"candidates ranked per request: {candidates['mean']:,.0f} "
               f"({candidates['catalogue_share']:.1%} of the catalogue), holding "
               f"{_fmt(candidates['recall'])} of the relevant items")
  decoder = report.get("decoder")
  if decoder:
    lines.append("decoder (nats, relevant items' SIDs, teacher-forced): cross-entropy per "
                 "level " + " / ".join(_fmt(x) for x in decoder["code_cross_entropy"])
                 + ", code entropy " + " / ".join(_fmt(x) for x in
                                                  decoder["target_code_entropy"])
                 + f", level-1 information {_fmt(decoder['level1_information'])}")
  encoder = report.get("encoder")
  if encoder:
    lines.append(f"encoder alone (exact cosine top-{diagnostics.DENSE_K}): hit "
                 f"{_fmt(encoder['dense']['hit'])}, ndcg {_fmt(encoder['dense']['ndcg'])}; "
                 "requests quantized to the relevant SID prefix per level "
                 + " / ".join(_fmt(x) for x in encoder["sid_prefix_agreement"])
                 + f"; mean cosine between two items {_fmt(encoder['item_mean_cosine'])}")
    routed = encoder["routed"]
    codes = (f"the fewest of the {report['beam_size']} first codes nearest the request "
             f"holding {report['candidate_budget']} items" if report.get("candidate_budget")
             else f"the {report['beam_size']} first codes nearest the request")
    lines.append(f"routed without the decoder ({codes}, then cosine): hit "
                 f"{_fmt(routed['hit'])}, ndcg {_fmt(routed['ndcg'])}; "
                 f"{routed['candidates']:,.0f} candidates holding {_fmt(routed['recall'])} "
                 "of the relevant items")
  return "\n".join(lines)
