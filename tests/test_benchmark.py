"""`dgi benchmark` end to end on a small JSONL dataset: every kind of method, the frozen
index of Two-Stage, agreement with `dgi eval`, results.md and resuming."""

import json
import math
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from dgi_jax import errors, evaluate, metrics_log, retrieval
from dgi_jax import trained_run
from dgi_jax.baselines import dense
from dgi_jax.benchmark import finished_runs, runner
from dgi_jax.data import jsonl_format, synthetic_catalogue
from conftest import REPO_ROOT, load_config

METHODS = "bm25,dense,two_stage,dgi"


def _benchmark_config():
  config = load_config("tiny")
  with config.unlocked():
    config.benchmark = load_config("benchmark", "scratch").benchmark
    config.train.num_steps = 12
    config.train.checkpoint_every = 6
    config.benchmark.reference = "a published number"
  config.lock()
  return config


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  root = tmp_path_factory.mktemp("benchmark")
  raw = synthetic_catalogue.make_synthetic_dataset(300, 1200, 100, seed=4)
  data = jsonl_format.write_jsonl_dataset(root / "jsonl", raw.items, raw.splits)
  workdir, results = root / "work", root / "results"
  path = runner.run_benchmark(str(data), METHODS, _benchmark_config(), workdir,
                              results_dir=results, command=["dgi", "benchmark", "--x"],
                              log=lambda _: None)
  return dict(data=data, workdir=workdir, results=results, path=path)


def test_results_md_lists_every_method_with_plots(bench):
  text = bench["path"].read_text()
  assert "Command: `dgi benchmark --x`" in text and "a published number" in text
  for name in METHODS.split(","):
    result = finished_runs.read_result(bench["workdir"], name)
    assert result is not None and result["label"] in text
    assert (bench["results"] / f"longtail_{name}.png").stat().st_size > 1000
    assert 0.0 <= result["report"]["metrics"]["hit@10"] <= 1.0
    assert result["report"]["num_requests"] == 100
  # The decoder table lists the generative methods, not BM25 or the dense encoder.
  decoder_table = text.split("## Decoder and encoder")[1].split("\n\n")[2]
  labels = {finished_runs.read_result(bench["workdir"], n)["label"]: n for n in METHODS.split(",")}
  listed = {labels[row.split(" | ")[0][2:]] for row in decoder_table.splitlines()[2:]}
  assert listed == {"two_stage", "dgi"}
  spread = {labels[row.split(" | ")[0][2:]]: row.split(" | ")[-1].rstrip(" |")
            for row in decoder_table.splitlines()[2:]}
  dgi_encoder = finished_runs.read_result(bench["workdir"], "dgi")["report"]["encoder"]
  assert spread["dgi"] == f"{dgi_encoder['item_mean_cosine']:.3f}"
  # Every ranking's treatment of the requests' own history items, BM25's included.
  history_table = text.split("## The requests' own history items")[1].split("\n\n")[2]
  for row in history_table.splitlines()[2:]:
    label, *cells = row.strip("| ").split(" | ")
    history = finished_runs.read_result(bench["workdir"], labels[label])["report"]["history"]
    assert cells == [f"{history['relevant_in_history']:.3f}",
                     f"{history['first_in_history']:.3f}",
                     f"{history['ranked_in_history']:.2f}"]
  assert len(history_table.splitlines()) == 2 + len(labels)
  missing = [line for line in text.splitlines() if line.startswith("Not run")]
  assert missing and "dgi_ste" in missing[0] and "bm25" not in missing[0]


def test_two_stage_second_stage_keeps_the_first_stage_sids(bench):
  stage1 = trained_run.load_trained(bench["workdir"] / "two_stage" / "stage1")
  stage2 = trained_run.load_trained(bench["workdir"] / "two_stage" / "stage2")
  warmup = trained_run.load_trained(bench["workdir"] / "two_stage" / "warmup")
  sids = [retrieval.Retriever(t.model, t.params, t.run_data, t.config).sids
          for t in (stage1, stage2)]
  np.testing.assert_array_equal(sids[0], sids[1])
  # ... while the retriever (request encoder, decoder, heads) did train.
  for name in ("encoder", "decoder", "head_0"):
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(stage1.params[name]), jax.tree.leaves(stage2.params[name]))), name
  # One budget: warm-up round(.3 * 12) = 4, stage 1 round(.15 * 12) = 2, stage 2 the rest.
  steps = [t.config.train.num_steps for t in (warmup, stage1, stage2)]
  assert steps == [4, 2, 6]
  assert stage1.config.train.init_from_kmeans and not stage2.config.train.init_from_kmeans


def test_generative_methods_warm_up_the_encoder_then_kmeans(bench):
  warmup = trained_run.load_trained(bench["workdir"] / "dgi" / "warmup")
  main = trained_run.load_trained(bench["workdir"] / "dgi" / "main")
  assert [warmup.config.train.num_steps, main.config.train.num_steps] == [4, 8]
  # The warm-up trains InfoNCE alone; the main run starts from it with k-means codebooks.
  assert warmup.config.loss.infonce_weight == 1.0 and warmup.config.loss.ntp_weight == 0.0
  assert main.config.loss.ntp_weight == 1.0
  assert main.config.train.init_from.endswith("warmup") and main.config.train.init_from_kmeans
  assert not np.allclose(warmup.params["codebook_0"], main.params["codebook_0"])


@pytest.mark.parametrize("num_items, size", [
    (300, 32),  # 2 sqrt(300) = 34.6.
    (5183, 128), (12101, 256),  # SciFact, Beauty: 144 and 220.
    (50_000, 512), (10, 10),  # 447; and never more codes than items.
    (10_000_000, 4096)])
def test_index_sized_to_the_catalogue(num_items, size):
  sized = runner.index_for_catalogue(num_items, 3)
  assert sized["model.codebook_sizes"] == (size,) * 3
  assert sized["train.kmeans_items"] == min(num_items, 100_000)


def test_runs_use_the_index_sized_to_the_catalogue(bench):
  # The tiny config's (8, 8, 8) codebooks and 300-item sample give way to the rule.
  main = trained_run.load_trained(bench["workdir"] / "dgi" / "main")
  assert tuple(main.config.model.codebook_sizes) == (32, 32, 32)
  assert main.params["codebook_0"].shape[0] == 32
  assert main.config.train.kmeans_items == 300


def test_generative_result_equals_dgi_eval(bench):
  result = finished_runs.read_result(bench["workdir"], "dgi")
  chosen = result["report"]  # At the history choice and prior weight validation chose.
  report, _, _, _ = evaluate.evaluate_workdir(
      bench["workdir"] / "dgi" / "main", "test", exclude_history=chosen["exclude_history"],
      popularity_weight=chosen["popularity_weight"])
  assert result["report"]["metrics"] == pytest.approx(report["metrics"])
  assert result["train_seconds"] > 0


def test_cosine_weight_chosen_on_validation_then_test_reported_at_it(bench, tmp_path):
  # A run trained under the 'cosine' ranking, reported under 'sid' with a weight grid:
  # the report follows the benchmark's eval section, not the run's.
  config = _benchmark_config()
  with config.unlocked():
    config.eval.ranking, config.eval.candidate_level = "sid", 1
    config.benchmark.cosine_weight_grid = (0.0, 50.0)
    config.benchmark.exclude_history_grid = ()
    config.benchmark.popularity_weight_grid = ()
  run_dir = bench["workdir"] / "dgi" / "main"
  assert trained_run.load_trained(run_dir).config.eval.ranking != "sid"
  report = runner._generative_report(run_dir, config)  # pylint: disable=protected-access
  selection = report["cosine_weight_selection"]
  assert (report["ranking"], report["candidate_level"]) == ("sid", 1)
  for weight in (0.0, 50.0):  # Each validation score is `dgi eval`'s at that weight.
    valid, _, _, _ = evaluate.evaluate_workdir(run_dir, "validation", ranking="sid",
                                               cosine_weight=weight, candidate_level=1)
    assert selection["scores"][weight] == pytest.approx(valid["metrics"]["hit@10"])
  scores = selection["scores"]
  assert selection["chosen"] == (50.0 if scores[50.0] > scores[0.0] else 0.0)
  assert report["cosine_weight"] == selection["chosen"]
  test, _, _, _ = evaluate.evaluate_workdir(run_dir, "test", ranking="sid",
                                            cosine_weight=selection["chosen"],
                                            candidate_level=1)
  assert report["metrics"] == pytest.approx(test["metrics"])
  # results.md names the weight of each method and its grid.
  path = runner.report_lib.write_results("tiny", config, {"dgi": {
      **finished_runs.read_result(bench["workdir"], "dgi"), "report": report}}, tmp_path, "dgi")
  text = path.read_text()
  assert "log P(whole SID) + w (chosen per method on validation, below) x cosine" in text
  chosen = selection["chosen"]
  assert f"**{chosen:g}: {scores[chosen]:.3f}**" in text


def _dense_hit(trained, split: str, **settings) -> float:
  """Hit@10 of a trained dense run's exact ranking of `split` under `settings`
  (`dense.dense_rankings`' popularity weight or history choice)."""
  ranked, relevant, _ = dense.dense_rankings(trained.model, trained.params, trained.run_data,
                                             trained.config, split, 20, **settings)
  return evaluate.ranking_report(ranked, relevant, trained.run_data.dataset.train_popularity,
                                 5)["metrics"]["hit@10"]


def test_popularity_weight_chosen_on_validation_for_every_cosine_ranking(bench, tmp_path):
  config = _benchmark_config()
  with config.unlocked():
    config.benchmark.popularity_weight_grid = (0.0, 100.0)
    config.benchmark.exclude_history_grid = ()
  # The generative search: each validation score is `dgi eval`'s at that weight, and the
  # test split is reported at the chosen one.
  run_dir = bench["workdir"] / "dgi" / "main"
  report = runner._generative_report(run_dir, config)  # pylint: disable=protected-access
  selection = report["popularity_weight_selection"]
  for weight in (0.0, 100.0):
    valid, _, _, _ = evaluate.evaluate_workdir(run_dir, "validation",
                                               popularity_weight=weight)
    assert selection["scores"][weight] == pytest.approx(valid["metrics"]["hit@10"])
  scores = selection["scores"]
  assert selection["chosen"] == (100.0 if scores[100.0] > scores[0.0] else 0.0)
  assert report["popularity_weight"] == selection["chosen"]
  test, _, _, _ = evaluate.evaluate_workdir(run_dir, "test",
                                            popularity_weight=selection["chosen"])
  assert report["metrics"] == pytest.approx(test["metrics"])
  # The dense row: the same choice over its exact cosine ranking.
  dense_dir = bench["workdir"] / "dense"
  dense_report = runner._dense_report(dense_dir, config)  # pylint: disable=protected-access
  dense_selection = dense_report["popularity_weight_selection"]
  trained = trained_run.load_trained(dense_dir)
  for weight in (0.0, 100.0):
    assert dense_selection["scores"][weight] == pytest.approx(
        _dense_hit(trained, "validation", popularity_weight=weight))
  assert dense_report["metrics"]["hit@10"] == pytest.approx(
      _dense_hit(trained, "test", popularity_weight=dense_selection["chosen"]))
  # results.md names each method's weight and its grid.
  path = runner.report_lib.write_results("tiny", config, {
      "dgi": {**finished_runs.read_result(bench["workdir"], "dgi"), "report": report},
      "dense": {**finished_runs.read_result(bench["workdir"], "dense"),
                "report": dense_report}}, tmp_path, "dgi")
  text = path.read_text()
  assert "plus v (chosen per method on validation, below) x ln(1 + the item's" in text
  assert "## Popularity prior's weight of each ranking, chosen on validation" in text
  for chosen_selection in (selection, dense_selection):
    chosen = chosen_selection["chosen"]
    assert f"**{chosen:g}: {chosen_selection['scores'][chosen]:.3f}**" in text


def test_history_left_out_or_kept_as_validation_chooses_for_every_method(bench, tmp_path,
                                                                        monkeypatch):
  config = _benchmark_config()
  with config.unlocked():
    config.benchmark.popularity_weight_grid = ()
  assert tuple(config.benchmark.exclude_history_grid) == (False, True)
  choices = (False, True)

  def check(selection, valid_hit, report):
    """Each validation score is the method's own ranking under that choice; the best is
    chosen (ties: kept); the test report follows it. On this data no relevant item is a
    history item, so leaving the history out can only free top-10 slots."""
    for value in choices:
      assert selection["scores"][value] == pytest.approx(valid_hit(value))
    scores = selection["scores"]
    assert selection["chosen"] == (scores[True] > scores[False])
    assert report["history"]["relevant_in_history"] == 0
    assert scores[True] >= scores[False]
    if selection["chosen"]:
      assert report["history"]["ranked_in_history"] == 0

  run_dir = bench["workdir"] / "dgi" / "main"
  report = runner._generative_report(run_dir, config)  # pylint: disable=protected-access
  selection = report["exclude_history_selection"]
  check(selection, lambda value: evaluate.evaluate_workdir(
      run_dir, "validation", exclude_history=value)[0]["metrics"]["hit@10"], report)
  assert report["exclude_history"] == selection["chosen"]
  test, _, _, _ = evaluate.evaluate_workdir(run_dir, "test",
                                            exclude_history=selection["chosen"])
  assert report["metrics"] == pytest.approx(test["metrics"])

  dense_dir = bench["workdir"] / "dense"
  dense_report = runner._dense_report(dense_dir, config)  # pylint: disable=protected-access
  trained = trained_run.load_trained(dense_dir)
  dense_selection = dense_report["exclude_history_selection"]
  check(dense_selection,
        lambda value: _dense_hit(trained, "validation", exclude_history=value), dense_report)
  assert dense_report["metrics"]["hit@10"] == pytest.approx(
      _dense_hit(trained, "test", exclude_history=dense_selection["chosen"]))

  # BM25: each validation score is its report on that split under the fixed choice.
  bm25 = runner._bm25_report(config, bench["workdir"])  # pylint: disable=protected-access

  def bm25_report(value, split):
    fixed = _benchmark_config()
    with fixed.unlocked():
      fixed.benchmark.exclude_history_grid = ()
      fixed.eval.exclude_history = value
    monkeypatch.setattr(runner, "SPLIT", split)
    return runner._bm25_report(fixed, bench["workdir"])  # pylint: disable=protected-access
  bm25_selection = bm25["exclude_history_selection"]
  check(bm25_selection,
        lambda value: bm25_report(value, "validation")["metrics"]["hit@10"], bm25)
  assert bm25["metrics"] == pytest.approx(
      bm25_report(bm25_selection["chosen"], "test")["metrics"])

  # results.md names the choice of each method and the score of each.
  path = runner.report_lib.write_results("tiny", config, {
      "dgi": {**finished_runs.read_result(bench["workdir"], "dgi"), "report": report},
      "bm25": {**finished_runs.read_result(bench["workdir"], "bm25"), "report": bm25}},
      tmp_path, "dgi")
  text = path.read_text()
  # The benchmark's own results.md, written from the results read back as JSON, too.
  for written in (text, bench["path"].read_text()):
    assert "## The requests' history items, left out of each ranking or kept" in written
  assert ("the request's history items left out of every method's ranking or kept, as "
          "validation chooses per method (below)") in text
  assert "## The requests' history items, left out of each ranking or kept, chosen on " in text
  for chosen_selection in (selection, bm25_selection):
    words = {False: "kept", True: "left out"}
    chosen = chosen_selection["chosen"]
    assert f"**{words[chosen]}: {chosen_selection['scores'][chosen]:.3f}**" in text
    assert f"{words[not chosen]}: {chosen_selection['scores'][not chosen]:.3f}" in text


def test_validation_picks_the_reported_checkpoint(tmp_path):
  raw = synthetic_catalogue.make_synthetic_dataset(300, 1200, 100, seed=4)
  data = jsonl_format.write_jsonl_dataset(tmp_path / "jsonl", raw.items, raw.splits)
  config = _benchmark_config()
  with config.unlocked():
    config.train.eval_every = config.train.checkpoint_every = 4
  workdir = tmp_path / "work"
  path = runner.run_benchmark(str(data), "dense,dgi", config, workdir,
                              results_dir=tmp_path / "results", command=["dgi"],
                              log=lambda _: None)
  assert "best validation hit@10 (scored every 4 steps)" in path.read_text()
  for name, run in (("dense", "dense"), ("dgi", "dgi/main")):
    rows = [json.loads(line) for line in (workdir / run / "metrics.jsonl").open()]
    valid = {r["step"]: r["hit@10"] for r in rows if r["kind"] == "valid"}
    steps = trained_run.read_config(workdir / run).train.num_steps  # dgi: after warm-up.
    assert sorted(valid) == list(range(4, steps + 1, 4)) and len(valid) >= 2, name
    chosen = finished_runs.read_result(workdir, name)["report"]["checkpoint"]
    assert chosen["selected"] == "best" and valid[chosen["step"]] == max(valid.values())
  # The dense method is scored by its own exact top-K, not by the generative search.
  trained = trained_run.load_trained(workdir / "dense")
  e = trained.config.eval
  ranked, relevant, _ = dense.dense_rankings(trained.model, trained.params, trained.run_data,
                                             trained.config, "validation", e.k)
  report = evaluate.ranking_report(ranked, relevant,
                                   trained.run_data.dataset.train_popularity,
                                   e.num_popularity_buckets)
  dense_valid = [r for r in (json.loads(line) for line in (workdir / "dense" /
                                                           "metrics.jsonl").open())
                 if r["kind"] == "valid" and r["step"] == trained.step]
  assert dense_valid[0]["hit@10"] == pytest.approx(report["metrics"]["hit@10"])


def test_rerun_keeps_finished_methods_and_runs_only_new_ones(bench, monkeypatch):
  before = (bench["workdir"] / "dgi" / finished_runs.RESULT_FILE).stat().st_mtime_ns
  ran = []

  def fake_run_method(method, config, workdir):
    ran.append(method.name)
    return {"method": method.name, "label": method.label, "train_seconds": 0.0,
            "report": {"metrics": {"hit@10": 0.0, "ndcg@10": 0.0}}}

  monkeypatch.setattr(runner, "run_method", fake_run_method)
  runner.run_benchmark(str(bench["data"]), METHODS + ",dgi_ste", _benchmark_config(),
                       bench["workdir"], results_dir=bench["results"], command=["dgi"],
                       log=lambda _: None)
  assert ran == ["dgi_ste"]
  assert (bench["workdir"] / "dgi" / finished_runs.RESULT_FILE).stat().st_mtime_ns == before


def test_seeds_rerun_the_trained_methods_and_report_mean_and_error(bench, tmp_path,
                                                                  monkeypatch):
  workdir = tmp_path / "work"
  shutil.copytree(bench["workdir"], workdir)  # Run 0 of each method: the fixture's.
  config = _benchmark_config()
  with config.unlocked():
    config.benchmark.num_seeds = 2
  path = runner.run_benchmark(str(bench["data"]), "bm25,dgi", config, workdir,
                              results_dir=tmp_path / "results", command=["dgi"],
                              log=lambda _: None)
  # BM25 is deterministic: one run. DGI's second run has both seeds moved by one.
  assert not (workdir / "seed1" / "bm25").exists()
  first, second = (trained_run.read_config(w / "dgi" / "main")
                   for w in (workdir, workdir / "seed1"))
  assert second.train.seed == first.train.seed + 1
  assert second.data.shuffle_seed == first.data.shuffle_seed + 1
  losses = [[r["total"] for r in metrics_log.read_metrics(w / "dgi" / "main")
             if r["kind"] == "train"] for w in (workdir, workdir / "seed1")]
  assert losses[0] != losses[1]
  # The seeds row: mean and standard error of two values, (a + b) / 2 and |a - b| / 2.
  runs = [finished_runs.read_result(w, "dgi") for w in (workdir, workdir / "seed1")]
  a, b = (r["report"]["metrics"]["hit@10"] for r in runs)
  seeds_section = path.read_text().split("## Over seeds")[1].split("\n## ")[0]
  rows = [line for line in seeds_section.splitlines() if line.startswith("| DGI")]
  assert rows == [rows[0]] and f"| 2 | {(a + b) / 2:.4f} ± {abs(a - b) / 2:.4f} |" in rows[0]
  assert "BM25" not in seeds_section.split("Single runs")[0]  # One run each.
  assert "Dense" not in seeds_section.split("Single runs")[0]
  # BM25's single run read against DGI's two seeds: the sample deviation is |a - b| / sqrt 2.
  bm25 = finished_runs.read_result(workdir, "bm25")["report"]["metrics"]["hit@10"]
  deviation = abs(a - b) / math.sqrt(2)
  assert (f"| BM25 (bm25s) | {bm25:.4f} | {bm25 - (a + b) / 2:+.4f} | "
          f"{(bm25 - (a + b) / 2) / deviation:+.1f} |") in seeds_section
  # A rerun finds every run finished and trains nothing.
  monkeypatch.setattr(runner, "run_method", lambda *args: pytest.fail("ran again"))
  runner.run_benchmark(str(bench["data"]), "bm25,dgi", config, workdir,
                       results_dir=tmp_path / "results", command=["dgi"],
                       log=lambda _: None)


def test_the_results_dir_resumes_the_benchmark_in_a_fresh_workdir(bench, tmp_path,
                                                                   monkeypatch):
  results = tmp_path / "results"
  shutil.copytree(bench["results"], results)
  for name in METHODS.split(","):  # Each finished run's result, as the workdir has it.
    kept = json.loads(finished_runs.kept_result_path(results, 0, name).read_text())
    assert kept == finished_runs.read_result(bench["workdir"], name)
    assert not finished_runs.NOT_COMPARED_FIELDS & set(kept["config"])  # No paths kept.
  (results / "results.md").unlink()
  monkeypatch.setattr(runner, "run_method", lambda *args: pytest.fail("ran again"))
  # The table from the fixture's work directory, and from the results directory alone.
  expected, path = (
      runner.run_benchmark(str(bench["data"]), METHODS, _benchmark_config(), workdir,
                           results_dir=out, command=["dgi", "benchmark", "--x"],
                           log=lambda _: None)
      for workdir, out in ((bench["workdir"], tmp_path / "expected"),
                           (tmp_path / "fresh_work", results)))
  assert path.read_text() == expected.read_text()
  assert not (tmp_path / "fresh_work" / "dgi").exists()


def test_the_work_directory_result_wins_and_its_copy_alone_counts_as_finished(tmp_path):
  work, results = tmp_path / "work", tmp_path / "results"
  (work / "seed1" / "dgi").mkdir(parents=True)
  (work / "seed1" / "dgi" / finished_runs.RESULT_FILE).write_text('{"hit": 1}')
  kept = finished_runs.kept_result_path(results, 1, "dgi")
  assert kept == results / "runs" / "seed1" / "dgi.json"
  kept.parent.mkdir(parents=True)
  kept.write_text('{"hit": 0}')
  assert finished_runs.finished_result(work, results, 1, "dgi") == {"hit": 1}
  assert json.loads(kept.read_text()) == {"hit": 1}
  assert finished_runs.finished_result(tmp_path / "fresh", results, 1, "dgi") == {"hit": 1}
  assert finished_runs.finished_result(tmp_path / "fresh", results, 0, "dgi") is None


def test_the_kept_copy_records_only_the_compared_fields(tmp_path):
  # A work directory's result written before results recorded only the compared fields
  # holds the machine's paths; its copy in the results directory does not.
  work, results = tmp_path / "work", tmp_path / "results"
  (work / "dgi").mkdir(parents=True)
  recorded = {"data.dataset": "/home/me/data/beauty", "loss.infonce_weight": 10.0,
              "model.pretrained": "/home/me/models/all-MiniLM-L6-v2/abc123"}
  (work / "dgi" / finished_runs.RESULT_FILE).write_text(
      json.dumps({"hit": 1, "config": recorded}))
  expected = {"hit": 1, "config": {"loss.infonce_weight": 10.0,
                                   "model.pretrained": "all-MiniLM-L6-v2/abc123"}}
  assert finished_runs.finished_result(work, results, 0, "dgi") == expected
  assert json.loads(finished_runs.kept_result_path(results, 0, "dgi").read_text()) == expected


def test_a_run_finished_under_another_config_is_refused_naming_the_field(bench, tmp_path,
                                                                         monkeypatch):
  results = tmp_path / "results"
  shutil.copytree(bench["results"], results)
  monkeypatch.setattr(runner, "run_method", lambda *args: pytest.fail("ran"))
  config = _benchmark_config()
  with config.unlocked():
    config.loss.infonce_weight = float(config.loss.infonce_weight) + 1.0
  with pytest.raises(errors.UserError, match=r"loss\.infonce_weight: ") as error:
    runner.run_benchmark(str(bench["data"]), "bm25", config, tmp_path / "work",
                         results_dir=results, command=["dgi"], log=lambda _: None)
  # The first method of the table with a finished run: refused before anything ran.
  assert str(finished_runs.kept_result_path(results, 0, "bm25")) in str(error.value)
  # Where the files lie and how the work is spread is not a different config.
  config = _benchmark_config()
  with config.unlocked():
    config.eval.batch_size = int(config.eval.batch_size) + 1
    config.train.parallelism = "pmap"
  runner.run_benchmark(str(bench["data"]), "bm25", config, tmp_path / "work",
                       results_dir=results, command=["dgi"], log=lambda _: None)


def test_config_changes_lists_each_changed_field_and_skips_unrecorded_results():
  config = _benchmark_config()

  def pretrained_config(path):
    return runner.method_config(config, {"model.pretrained": path})

  result = {"config": finished_runs.flat_config(config)}
  assert finished_runs.config_changes(result, config) == []
  changed = runner.method_config(config, {"model.codebook_sizes": (3, 3, 3),
                                          "data.tfds_dir": "/elsewhere"})
  before = list(config.model.codebook_sizes)
  assert finished_runs.config_changes(result, changed) == [
      f"model.codebook_sizes: {before!r} -> [3, 3, 3]"]
  assert finished_runs.config_changes({"report": {}}, changed) == []
  # A field the recorded config predates (a newer version's) is not a change.
  older = {k: v for k, v in result["config"].items() if k != "model.codebook_sizes"}
  assert finished_runs.config_changes({"config": older}, changed) == []
  # A field added since, at the value the older runs had, is no change; at another it is.
  older = {k: v for k, v in result["config"].items() if k != "eval.candidate_budget"}
  assert finished_runs.config_changes({"config": older}, config) == []
  budget = runner.method_config(config, {"eval.candidate_budget": 1000})
  assert finished_runs.config_changes({"config": older}, budget) == [
      "eval.candidate_budget: 0 -> 1000"]
  # A pre-trained checkpoint is the same one in another place, another one elsewhere.
  def pretrained(path):
    return {"config": {**finished_runs.flat_config(config), "model.pretrained": path}}
  assert finished_runs.config_changes(pretrained("/a/env/minilm/model_files"),
                               pretrained_config("/b/venv/minilm/model_files")) == []
  assert finished_runs.config_changes(pretrained("/a/env/minilm/model_files"),
                               pretrained_config("/a/env/mpnet/model_files")) == [
      "model.pretrained: 'minilm/model_files' -> 'mpnet/model_files'"]


def test_seeded_methods_repeat_only_the_trained_methods_they_name():
  benchmark = _benchmark_config().benchmark.copy_and_resolve_references()
  with benchmark.unlocked():
    benchmark.num_seeds = 3
  every = runner.runs_per_method(benchmark)
  assert every["dgi"] == every["dgi_none"] == every["dense"] == every["two_stage"] == 3
  assert every["bm25"] == every["zero_shot"] == 1
  benchmark.seeded_methods = "dgi,dense"
  named = runner.runs_per_method(benchmark)
  assert {name for name, runs in named.items() if runs == 3} == {"dgi", "dense"}
  assert set(named) == set(every) and set(named.values()) == {1, 3}
  benchmark.seeded_methods = "dgi,bm25"
  with pytest.raises(ValueError, match="seeded_methods: bm25 train nothing"):
    runner.runs_per_method(benchmark)
  benchmark.seeded_methods = "dgi,dgj"
  with pytest.raises(ValueError, match="unknown method"):
    runner.runs_per_method(benchmark)


def test_mean_and_standard_error_by_hand():
  mean, error = runner.report_lib.mean_and_standard_error([0.1, 0.2, 0.3])
  # Sample standard deviation 0.1, over sqrt(3).
  assert mean == pytest.approx(0.2) and error == pytest.approx(0.1 / math.sqrt(3))
  assert runner.report_lib.mean_and_standard_error([0.4]) == (0.4, 0.0)


def test_unknown_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    runner.run_benchmark(str(tmp_path / "nope"), "bm25", _benchmark_config(), tmp_path,
                         log=lambda _: None)
  with pytest.raises(ValueError, match="unknown method"):
    runner.run_benchmark(str(tmp_path), "bm26", _benchmark_config(), tmp_path,
                         log=lambda _: None)
  config = _benchmark_config()
  with config.unlocked():
    config.benchmark.num_seeds = 0
  with pytest.raises(ValueError, match="num_seeds=0"):
    runner.run_benchmark(str(tmp_path), "bm25", config, tmp_path, log=lambda _: None)


def _dgi(*args):
  return subprocess.run([sys.executable, "-m", "dgi_jax.main", *map(str, args)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_cli_runs_bm25_and_quotes_its_command(bench, tmp_path):
  # BM25 reads config.data.max_history: set it to the fixture's (tiny) value.
  proc = _dgi("benchmark", "--dataset", bench["data"], "--methods", "bm25", "--workdir",
              tmp_path / "w", "--results_dir", tmp_path / "r", "--config",
              "configs/benchmark.py", "--config.data.max_history=3")
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = (tmp_path / "r" / "results.md").read_text()
  assert f"Command: `dgi benchmark --dataset {bench['data']} --methods bm25" in text
  # The same ranking as the library run of the fixture (same data, same BM25).
  ours = finished_runs.read_result(tmp_path / "w", "bm25")["report"]["metrics"]
  assert ours == finished_runs.read_result(bench["workdir"], "bm25")["report"]["metrics"]


def test_cli_refuses_a_run_finished_under_another_config_in_one_line(bench, tmp_path):
  shutil.copytree(bench["results"], tmp_path / "r")
  (tmp_path / "r" / "results.md").unlink()
  proc = _dgi("benchmark", "--dataset", bench["data"], "--methods", "bm25", "--workdir",
              tmp_path / "w", "--results_dir", tmp_path / "r", "--config",
              "configs/benchmark.py")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.startswith("dgi benchmark: error: bm25 (run 0) finished under "
                                "another config (")
  assert len(proc.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "r" / "results.md").exists()


@pytest.mark.parametrize("args, message", [
    (("--dataset", "/no/such/dir", "--methods", "bm25"), "dgi benchmark: error: "),
    (("--dataset", "beauty", "--methods", "bm26"), "unknown method"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
  proc = _dgi("benchmark", *args, "--workdir", tmp_path / "w")
  assert proc.returncode == 1 and message in proc.stderr
  assert "Traceback" not in proc.stderr
