"""Trains and evaluates each benchmark method under one budget; resumable.

Layout of a benchmark work directory:

  data/<dataset>/      the converted JSONL dataset (beauty, scifact), built once
  tfds/                prepared TFDS files and tokenizer, shared by every method
  encoder_cache/       the frozen encoder's outputs (`encoder_cache.save`), shared likewise
  <method>/            the method's training runs: warmup/ (the encoder warm-up, when
                       benchmark.encoder_warmup_fraction > 0), then main/ (DGI and its
                       ablations) or stage1/ and stage2/ (two_stage)
  <method>/result.json its test report, timings and config; written last, atomically
  seed<k>/<method>/    the same for run k of a trained method (benchmark.num_seeds > 1;
                       benchmark.seeded_methods, when set, names the methods repeated),
                       trained with train.seed and data.shuffle_seed plus k

Layout of a results directory (`results_dir`, the work directory unless named):

  results.md, longtail_<method>.png     the tables and plots
  runs/<method>.json                     a copy of each finished run's result.json, what
  runs/seed<k>/<method>.json             results.md is built from

A run is finished when its result.json is in the work directory or its copy is in the
results directory, and is not run again; one without is (re)started, and its training
resumes from its own latest checkpoint. So a results directory kept under version control
resumes a long benchmark in a fresh work directory (another machine, a scratch disk that
was wiped). Each result records the config it was made under; a finished run whose config
differs from the present one in a field that changes results is refused with the fields
named, rather than reported beside runs of another config. The results table and plots
are rebuilt after each method, so an interrupted benchmark leaves a valid partial table.
"""

import json
import math
import os
import pathlib
import shlex
import sys
import time
from typing import Any, Dict, Optional, Sequence

import jax
import ml_collections
import numpy as np

from dgi_jax import config_checks, evaluate, retrieval, run_setup, train
from dgi_jax import errors, trained_run
from dgi_jax.baselines import bm25, dense
from dgi_jax.benchmark import finished_runs
from dgi_jax.benchmark import methods as methods_lib
from dgi_jax.benchmark import report as report_lib
from dgi_jax.benchmark.machine import machine_description
from dgi_jax.data import converters, jsonl_format, pipeline, records
from dgi_jax.models import encoders

SPLIT = "test"


def dataset_directory(dataset: str, data_root, workdir, converter_options) -> str:
  """The absolute JSONL directory of `dataset`: a converted named dataset, or a user
  directory. Absolute, because each method's saved config names it: `dgi eval` of a
  method's run then works from any directory."""
  if dataset not in converters.CONVERTERS:
    if not os.path.isdir(dataset):
      raise FileNotFoundError(f"--dataset {dataset!r} is neither one of "
                              f"{sorted(converters.CONVERTERS)} nor a directory")
    return str(pathlib.Path(dataset).resolve())
  out = (pathlib.Path(workdir) / "data" / dataset).resolve()
  if not out.is_dir():  # Converters write to a temporary directory, then rename.
    source = pathlib.Path(data_root) / converters.DEFAULT_SOURCES[dataset]
    converters.CONVERTERS[dataset](source, out, **dict(converter_options))
  return str(out)


def method_config(base: ml_collections.ConfigDict, overrides: Dict[str, Any],
                  **fields) -> ml_collections.ConfigDict:
  """A copy of `base` with 'section.field' overrides (then `fields`, same form) applied."""
  config = ml_collections.ConfigDict(base.to_dict())
  for key, value in {**overrides, **fields}.items():
    section, field = key.split(".")
    if field not in config[section]:
      raise KeyError(f"method override {key!r}: no such config field")
    config[section][field] = value
  config.lock()
  return config


def index_for_catalogue(num_items: int, num_levels: int) -> Dict[str, Any]:
  """Codebook sizes and k-means sample sized to a catalogue of `num_items` items.

  Every level gets K codes, K the power of two nearest 2 sqrt(N) (16 <= K <= 4096, and at
  most N): level 1 then cuts the catalogue into cells of about sqrt(N) / 2 items, which
  the finer levels' K^(m-1) codes separate. The rule gives the sizes measured on the two
  real datasets (Beauty, 12,101 items: 256; SciFact, 5,183: 128) and 512 for 50k items.
  k-means sees the whole catalogue up to 100,000 items.
  """
  size = 2 ** round(math.log2(2 * math.sqrt(num_items)))
  size = int(min(max(size, 16), 4096, num_items))
  return {"model.codebook_sizes": (size,) * num_levels,
          "train.kmeans_items": min(num_items, 100_000)}


def seeded_config(base: ml_collections.ConfigDict, run: int) -> ml_collections.ConfigDict:
  """`base` for run `run` of a trained method: `run` added to train.seed (initialisation,
  k-means, Gumbel noise) and data.shuffle_seed (batch order)."""
  if not run:
    return base
  return method_config(base, {}, **{"train.seed": int(base.train.seed) + run,
                                    "data.shuffle_seed": int(base.data.shuffle_seed) + run})


def runs_per_method(benchmark: ml_collections.ConfigDict) -> Dict[str, int]:
  """How many runs each method gets: `benchmark.num_seeds` for a trained method named in
  `benchmark.seeded_methods` (every trained method when that is empty), one otherwise
  (a deterministic method, or an ablation read against the seeded methods' spread)."""
  num_seeds = int(benchmark.num_seeds)
  if num_seeds < 1:
    raise ValueError(f"--config.benchmark.num_seeds={num_seeds}: give 1 or more")
  trained = {m.name for m in methods_lib.METHODS if m.kind in methods_lib.TRAINED}
  seeded = trained
  if benchmark.seeded_methods:
    seeded = {m.name for m in methods_lib.select(benchmark.seeded_methods)}
    if seeded - trained:
      raise ValueError(f"--config.benchmark.seeded_methods: "
                       f"{', '.join(sorted(seeded - trained))} train nothing and run once")
  return {m.name: num_seeds if m.name in seeded else 1 for m in methods_lib.METHODS}


class BenchmarkInterrupted(RuntimeError):
  """A training run stopped before its last step (SIGTERM); rerunning resumes it."""


def _train(config, run_dir, evaluate_fn=None) -> float:
  """Trains (or resumes) one run to its end; its training seconds. `evaluate_fn`
  (`_validation_fn`) scores the checkpoints on the validation split.

  Raises BenchmarkInterrupted when the run stopped early on SIGTERM, so that no later
  stage starts from, and no result is written for, an unfinished run.
  """
  result = train.train_and_evaluate(config, run_dir, evaluate_fn=evaluate_fn)
  if result.step < int(config.train.num_steps):
    raise BenchmarkInterrupted(f"{run_dir} stopped at step {result.step} of "
                               f"{config.train.num_steps}; rerun the same command to resume")
  return result.train_seconds


def _validation_fn(kind: str, config):
  """What picks a trained method's best checkpoint, which its test report then reads:
  its own ranking (the generative search, or the dense top-K) on the validation split
  every `train.eval_every` steps, by `train.best_metric`; None when eval_every is 0 (the
  final checkpoint is reported)."""
  if not int(config.train.eval_every):
    return None
  if kind == methods_lib.DENSE:
    return dense.make_validation_fn(config)
  return evaluate.make_validation_fn(config)


def _checkpoint(trained) -> Dict[str, Any]:
  """The reported checkpoint: its step and how it was chosen ('best' on validation)."""
  return {"step": int(trained.step), "selected": trained.selected}


def _warmup_steps(config) -> int:
  """Steps of the encoder warm-up: benchmark.encoder_warmup_fraction of the budget."""
  return round(int(config.train.num_steps) * float(config.benchmark.encoder_warmup_fraction))


def _after_warm_up(config, method_dir, steps: int):
  """Trains the encoder warm-up, if any, in <method_dir>/warmup.

  The paper k-means-initialises the codebooks over a pre-trained T5's item embeddings;
  from scratch, part of the budget first trains the encoder alone (InfoNCE, the dense
  method's objective). Returns the config of the run that follows, `steps` long and
  initialised from the warm-up with k-means codebooks (without a warm-up: `config` with
  `steps`), and the warm-up's training seconds.
  """
  warmup_steps = _warmup_steps(config)
  if not warmup_steps:
    return method_config(config, {}, **{"train.num_steps": steps}), 0.0
  warmup = method_config(config, methods_lib.ENCODER_WARMUP,
                         **{"train.num_steps": warmup_steps})
  seconds = _train(warmup, method_dir / "warmup")
  return method_config(config, {}, **{"train.num_steps": steps,
                                      "train.init_from": str(method_dir / "warmup"),
                                      "train.init_from_kmeans": True}), seconds


def _num_params(params) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def _generative_report(run_dir, config) -> Dict[str, Any]:
  """The test report of a trained generative run, searched under the benchmark's `eval`
  section (a run trained before that section changed is reported under the new one), the
  cosine weight of 'blend' or 'sid' chosen on validation from benchmark.cosine_weight_grid
  when it lists any, then whether the requests' history items are left out from
  benchmark.exclude_history_grid, then the popularity prior's weight from
  benchmark.popularity_weight_grid, each when its grid lists any."""
  trained = trained_run.load_trained(run_dir)
  run_config = trained.config.copy_and_resolve_references()
  with run_config.unlocked():
    run_config.eval = config.eval.copy_and_resolve_references()
  retriever = retrieval.Retriever(trained.model, trained.params, trained.run_data,
                                  run_config)
  weights = tuple(config.benchmark.cosine_weight_grid)
  selection = None
  if weights and retriever.ranking in config_checks.WEIGHTED_RANKINGS:
    # The one index serves the sweep on validation and the test report.
    selection = evaluate.choose_cosine_weight(retriever, trained.run_data, run_config,
                                              weights)
  selections = {"cosine_weight_selection": selection}
  for attribute, grid in methods_lib.validation_grids(config):
    selections[f"{attribute}_selection"] = evaluate.choose_on_validation(
        retriever, trained.run_data, run_config, attribute, grid)
  report = evaluate.evaluate_split(retriever, trained.run_data, run_config, SPLIT)
  report.update({key: value for key, value in selections.items() if value is not None})
  report["num_params"] = _num_params(trained.params)
  report["checkpoint"] = _checkpoint(trained)
  return report


def _ranked_report(ranked, relevant, history, run_data, config, seconds) -> Dict[str, Any]:
  report = dict(split=SPLIT, k=int(ranked.shape[1]))
  report.update(evaluate.ranking_report(ranked, relevant, run_data.dataset.train_popularity,
                                        int(config.eval.num_popularity_buckets), history))
  report["timing"] = {"seconds": seconds, "requests_per_sec": len(ranked) / seconds}
  return report


def _without_items(ranked: np.ndarray, excluded, k: int) -> np.ndarray:
  """The first k entries of each row of `ranked` [Q, K] not in its `excluded` items,
  -1 padded."""
  out = np.full((len(ranked), k), -1, np.int32)
  for row, (items, drop) in enumerate(zip(ranked, excluded)):
    drop = set(np.asarray(drop).tolist())
    kept = [i for i in items.tolist() if i >= 0 and i not in drop][:k]
    out[row, :len(kept)] = kept
  return out


def _bm25_split(config, dataset, split: str, depth: int):
  """BM25's top `depth` items of `split`'s requests: (ranked int [Q, depth], relevant
  [Q, R], the requests' recent history items, one list each)."""
  requests = pipeline.read_requests(dataset, split)
  max_history = int(config.data.max_history)
  texts = [bm25.request_text(query, dataset.history_texts(history), max_history)
           for query, history in zip(requests["query"], requests["history"])]
  ranked = bm25.bm25_rankings(dataset.item_texts, texts, depth,
                              k1=float(config.benchmark.bm25_k1),
                              b=float(config.benchmark.bm25_b))
  history = [records.recent_history(h, max_history) for h in requests["history"]]
  return ranked, requests["relevant"], history


def _bm25_top(ranked: np.ndarray, history, k: int, exclude_history: bool) -> np.ndarray:
  """The top k of BM25's deeper `ranked` [Q, >= k], without each request's `history`
  items when `exclude_history`."""
  return _without_items(ranked, history, k) if exclude_history else ranked[:, :k]


def _bm25_report(config, workdir) -> Dict[str, Any]:
  """BM25's test report; with benchmark.exclude_history_grid, whether the history is left
  out is chosen on validation (BM25 has no cosine, so no popularity weight)."""
  run_data = run_setup.prepare_run_data(config, workdir)
  dataset = run_data.dataset
  k, max_history = int(config.eval.k), int(config.data.max_history)
  grid = dict(methods_lib.validation_grids(config)).get("exclude_history", ())
  exclude = bool(config.eval.exclude_history)
  # Deep enough that k items remain once the history is left out.
  depth = k + max_history * (exclude or any(grid))
  selection = None
  if grid:
    ranked, relevant, history = _bm25_split(config, dataset, "validation", depth)
    selection = evaluate.best_weight("validation", str(config.train.best_metric), {
        value: evaluate.ranking_score(_bm25_top(ranked, history, k, value), relevant,
                                      dataset.train_popularity, config)
        for value in grid})
    exclude = selection["chosen"]
  start = time.perf_counter()
  ranked, relevant, history = _bm25_split(config, dataset, SPLIT, depth)
  report = _ranked_report(_bm25_top(ranked, history, k, exclude), relevant,
                          pipeline.pad_rows(history, max_history), run_data, config,
                          time.perf_counter() - start)
  if selection is not None:
    report["exclude_history_selection"] = selection
  return report


def _zero_shot_report(config, workdir) -> Dict[str, Any]:
  """The pre-trained encoder's exact cosine ranking, without any training."""
  run_data = run_setup.prepare_run_data(config, workdir)
  model = run_setup.build_model(config)
  params = encoders.load_pretrained_params(
      run_setup.init_params(model, config, jax.random.PRNGKey(config.train.seed)),
      model.cfg, config.model.pretrained)
  return _cosine_report(model, params, run_data, config, methods_lib.validation_grids(config))


def _dense_report(run_dir, config) -> Dict[str, Any]:
  trained = trained_run.load_trained(run_dir)
  report = _cosine_report(trained.model, trained.params, trained.run_data, trained.config,
                          methods_lib.validation_grids(config))
  report["checkpoint"] = _checkpoint(trained)
  return report


def _cosine_report(model, params, run_data, config, grids) -> Dict[str, Any]:
  """The test report of an exact cosine ranking of the catalogue (the zero-shot and dense
  rows), with the settings of `grids` (`methods.validation_grids`: whether the history
  is left out, then the popularity prior's weight) chosen on validation."""
  selections = (dense.choose_on_validation(model, params, run_data, config, grids)
                if grids else {})
  chosen = {name: selection["chosen"] for name, selection in selections.items()}
  start = time.perf_counter()
  ranked, relevant, history = dense.dense_rankings(model, params, run_data, config, SPLIT,
                                                   int(config.eval.k), **chosen)
  report = _ranked_report(ranked, relevant, history, run_data, config,
                          time.perf_counter() - start)
  report["num_params"] = _num_params(params)
  report.update({f"{name}_selection": selection for name, selection in selections.items()})
  return report


def config_of(method: methods_lib.Method, base_config) -> ml_collections.ConfigDict:
  """The config `method` runs under: `base_config` with the method's overrides."""
  return method_config(base_config,
                       method.config_overrides(bool(base_config.model.pretrained)))


def run_method(method: methods_lib.Method, base_config, workdir) -> Dict[str, Any]:
  """Trains (or resumes) and evaluates one method; returns and writes its result."""
  method_dir = pathlib.Path(workdir) / method.name
  config = config_of(method, base_config)
  start = time.perf_counter()
  train_seconds = 0.0
  if method.kind == methods_lib.BM25:
    report = _bm25_report(config, workdir)
  elif method.kind == methods_lib.ZERO_SHOT:
    report = _zero_shot_report(config, workdir)
  elif method.kind == methods_lib.DENSE:
    train_seconds = _train(config, method_dir, _validation_fn(method.kind, config))
    report = _dense_report(method_dir, config)
  elif method.kind == methods_lib.GENERATIVE:
    total = int(config.train.num_steps)
    main, train_seconds = _after_warm_up(config, method_dir, total - _warmup_steps(config))
    train_seconds += _train(main, method_dir / "main", _validation_fn(method.kind, main))
    report = _generative_report(method_dir / "main", main)
  elif method.kind == methods_lib.TWO_STAGE:
    total = int(config.train.num_steps)
    stage1_steps = max(1, round(total * float(config.benchmark.two_stage_stage1_fraction)))
    stage1, train_seconds = _after_warm_up(config, method_dir, stage1_steps)
    stage2 = method_config(config, method.stage2_overrides,
                           **{"train.num_steps": total - _warmup_steps(config) - stage1_steps,
                              "train.init_from": str(method_dir / "stage1")})
    train_seconds += _train(stage1, method_dir / "stage1")
    # Stage 1 trains the quantizer alone: stage 2's retrieval is what validation picks.
    train_seconds += _train(stage2, method_dir / "stage2", _validation_fn(method.kind, stage2))
    report = _generative_report(method_dir / "stage2", stage2)
  else:
    raise ValueError(f"method {method.name}: unknown kind {method.kind!r}")
  result = {
      "method": method.name,
      "label": method.label,
      "kind": method.kind,
      "train_seconds": train_seconds,
      "wall_seconds_this_session": time.perf_counter() - start,
      "overrides": method.config_overrides(bool(base_config.model.pretrained)),
      "config": finished_runs.compared_config(finished_runs.flat_config(config)),
      "machine": machine_description(),
      "report": report,
  }
  path = evaluate.write_report(result, method_dir / finished_runs.RESULT_FILE)
  # What was written, as a later run reads it back (JSON: a weight grid's keys are text).
  return json.loads(path.read_text(encoding="utf-8"))


def _check_finished_runs(finished, base, workdir, results_dir):
  """Raises a UserError naming the first finished run made under another config."""
  for (name, run), result in finished.items():
    method = methods_lib.BY_NAME[name]
    changes = finished_runs.config_changes(result,
                                           config_of(method, seeded_config(base, run)))
    if changes:
      result_file = finished_runs.seed_workdir(workdir, run) / name / finished_runs.RESULT_FILE
      where = f"{result_file} and {finished_runs.kept_result_path(results_dir, run, name)}"
      raise errors.UserError(
          f"{method.name} (run {run}) finished under another config "
          f"({'; '.join(changes[:5])}{'; ...' if len(changes) > 5 else ''}): give another "
          f"--workdir and --results_dir, or remove {where} (where they exist) to run it "
          "again")


def run_benchmark(dataset: str, method_spec: str, base_config, workdir,
                  data_root="../shared/data", results_dir=None,
                  command: Optional[Sequence[str]] = None, log=print) -> pathlib.Path:
  """`dgi benchmark`: runs every selected method not yet finished; writes results.md.

  Args:
    dataset: 'beauty', 'scifact' (converted from `data_root`) or a JSONL directory.
    method_spec: 'all' or comma-separated method names (see `methods`).
    base_config: the benchmark config (budget, model size, `benchmark` section).
    workdir: where data, runs and results live; rerun with the same to resume.
    data_root: folder holding the raw datasets (amazon_beauty/, scifact/).
    results_dir: where results.md and the long-tail plots go (default `workdir`).
    command: the command line, quoted in results.md.
  Returns:
    The path of results.md.
  """
  selected = methods_lib.select(method_spec)
  runs = runs_per_method(base_config.benchmark)
  # A pre-trained encoder's architecture and vocabulary, for every method (BM25 reads the
  # run's tokenizer too); read first, so that a missing checkpoint writes nothing.
  base_config = encoders.resolve_pretrained(base_config)
  workdir = pathlib.Path(workdir)
  results_dir = pathlib.Path(results_dir or workdir)
  data_dir = dataset_directory(dataset, data_root, workdir,
                             base_config.benchmark.converter_options)
  sized = {}
  if base_config.benchmark.size_index_to_catalogue:
    num_items = len(jsonl_format.read_items(pathlib.Path(data_dir) / "items.jsonl"))
    sized = index_for_catalogue(num_items, len(base_config.model.codebook_sizes))
    log(f"[benchmark] {num_items} items: codebooks {sized['model.codebook_sizes']}, "
        f"k-means over {sized['train.kmeans_items']} items")
  # Shared by every method: the prepared data, and the frozen encoder's cache on disk
  # (unless the config names a folder for it).
  shared = {"data.dataset": data_dir, "data.tfds_dir": str(workdir / "tfds")}
  if not base_config.train.encoder_cache_dir:
    shared["train.encoder_cache_dir"] = str(workdir / "encoder_cache")
  base = method_config(base_config, sized, **shared)
  command = shlex.join(command if command is not None else sys.argv)
  # Every finished run is checked before anything runs, reported or not.
  finished = finished_runs.collect(workdir, results_dir, runs)
  _check_finished_runs(finished, base, workdir, results_dir)
  # A method's seeds run back to back, so the methods listed first finish first.
  for method in selected:
    if method.kind == methods_lib.ZERO_SHOT and not base.model.pretrained:
      log(f"[benchmark] {method.name}: skipped, the encoder is not pre-trained "
          "(model.pretrained is empty)")
      continue
    for run in range(runs[method.name]):
      name = method.name + (f" (seed +{run})" if run else "")
      if (method.name, run) in finished:
        log(f"[benchmark] {name}: finished earlier, kept")
        continue
      log(f"[benchmark] {name}: {method.label}")
      result = run_method(method, seeded_config(base, run),
                          finished_runs.seed_workdir(workdir, run))
      metrics = result["report"]["metrics"]
      log(f"[benchmark] {name}: hit@10 {metrics['hit@10']:.4f} ndcg@10 "
          f"{metrics['ndcg@10']:.4f}, trained {result['train_seconds'] / 60:.1f} min")
      _write_results(dataset, base, workdir, results_dir, command, runs)
  return _write_results(dataset, base, workdir, results_dir, command, runs)


def _write_results(dataset, config, workdir, results_dir, command,
                   runs: Dict[str, int]) -> pathlib.Path:
  """results.md from every finished result: run 0 of each method for the tables, and
  each method's finished runs over its seeds (`runs_per_method`)."""
  finished = finished_runs.collect(workdir, results_dir, runs)
  seeds = {}
  for method in methods_lib.METHODS:
    if (method.name, 0) in finished:
      seeds[method.name] = [finished[method.name, run]
                            for run in range(runs[method.name])
                            if (method.name, run) in finished]
  return report_lib.write_results(
      dataset, config, {name: results[0] for name, results in seeds.items()}, results_dir,
      command, seeds)
