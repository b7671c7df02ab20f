"""The serving commands of the `dgi` CLI on the session's tiny trained work directory
(`tiny_run`, validated, so `dgi eval` picks the best checkpoint by hit@10); the commands
that write there (`dgi eval`'s report and plots) run on a copy (`run_copy`)."""

import json
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from dgi_jax import checkpointing
from dgi_jax import trained_run
from conftest import REPO_ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _dgi(*args):
  return subprocess.run([sys.executable, "-m", "dgi_jax.main", *map(str, args)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_eval_opens_the_checkpoints_once(run_copy, dgi, monkeypatch):
  # Config, tokenizer, the best step (by validation hit@10) and params: one open.
  opened = []
  real_init = ocp.CheckpointManager.__init__

  def counting_init(self, *args, **kwargs):
    opened.append(args[0] if args else kwargs["directory"])
    real_init(self, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, "__init__", counting_init)
  code, _, err = dgi("eval", "--workdir", run_copy, "--split", "test")
  assert code == 0, err
  assert len(opened) == 1, opened


def test_eval_writes_report_and_plots(run_copy):
  proc = _dgi("eval", "--workdir", run_copy, "--split", "test")
  assert proc.returncode == 0, proc.stderr
  assert "hit" in proc.stdout and "B4" in proc.stdout and "unseen" in proc.stdout
  report = json.loads((run_copy / "eval_test.json").read_text())
  for name, value in report["metrics"].items():
    assert 0.0 <= value <= 1.0, name
  assert {"hit@1", "hit@5", "hit@10", "hit@20", "ndcg@10", "mrr@20",
          "recall@20"} <= set(report["metrics"])
  # Every (request, relevant item) pair lands in exactly one popularity bucket.
  trained = trained_run.load_trained(run_copy)
  dataset = trained.run_data.dataset
  rows = dataset.source("test").__getitems__(list(range(dataset.num_examples("test"))))
  relevant = np.concatenate([np.asarray(r["relevant"]).reshape(-1) for r in rows])
  buckets = report["long_tail"]["buckets"]
  assert len(buckets) == 5
  assert sum(b["count"] for b in buckets) == report["num_pairs"] == len(relevant)
  assert report["long_tail"]["unseen"]["count"] == int(
      (dataset.train_popularity[relevant] == 0).sum())
  assert all(b["hit@10"] is None or 0 <= b["hit@10"] <= 1 for b in buckets)
  # The best checkpoint by validation hit@10 was evaluated.
  valid = [json.loads(l) for l in (run_copy / "metrics.jsonl").read_text().splitlines()]
  best = max(r["hit@10"] for r in valid if r["kind"] == "valid")
  chosen = report["checkpoint"]
  assert chosen["selected"] == "best"
  assert [r["hit@10"] for r in valid
          if r["kind"] == "valid" and r["step"] == chosen["step"]] == [best]
  for name in ("popularity_buckets_test.png", "training_curves.png",
               "grad_norm_item_encoder.png"):
    assert (run_copy / "plots" / name).read_bytes().startswith(PNG_MAGIC), name


def test_eval_ranking_flags_override_the_checkpoint(run_copy, dgi):
  code, out, err = dgi("eval", "--workdir", run_copy, "--ranking", "blend",
                       "--cosine_weight", "2.5", "--exclude_history",
                       "--popularity_weight", "0.05")
  assert code == 0, err
  assert ("by beam score + 2.5 x cosine, each cosine plus 0.05 x ln(1 + the item's "
          "training popularity), the request's history items left out") in out
  # Named by the flags that change the run's own settings, in a fixed order.
  report = json.loads((run_copy / ("eval_test_ranking=blend_cosine_weight=2.5_"
                                   "exclude_history_popularity_weight=0.05.json")).read_text())
  assert (report["ranking"], report["cosine_weight"]) == ("blend", 2.5)
  assert report["popularity_weight"] == 0.05
  assert report["exclude_history"] and report["candidate_level"] == 0
  code, out, err = dgi("eval", "--workdir", run_copy, "--ranking", "cosine",
                       "--candidate_level", "2")
  assert code == 0, err
  assert ("by cosine over the beams' items, the beams over the first 2 code(s) and every "
          "item under them a candidate") in out
  report = json.loads(
      (run_copy / "eval_test_ranking=cosine_candidate_level=2.json").read_text())
  assert (report["ranking"], report["candidate_level"]) == ("cosine", 2)
  code, out, err = dgi("eval", "--workdir", run_copy, "--ranking", "sid", "--cosine_weight",
                       "4", "--candidate_level", "1", "--sid_rerank_depth", "30")
  assert code == 0, err
  assert ("by log P(whole SID) + 4 x cosine over the 30 candidates of highest cosine, the "
          "beams over the first 1 code(s)") in out
  report = json.loads((run_copy / ("eval_test_ranking=sid_cosine_weight=4_candidate_level=1_"
                                   "sid_rerank_depth=30.json")).read_text())
  assert (report["ranking"], report["cosine_weight"], report["sid_rerank_depth"]) == (
      "sid", 4.0, 30)
  code, out, err = dgi("eval", "--workdir", run_copy, "--ranking", "cosine",
                       "--candidate_level", "1", "--candidate_budget", "7", "--beam", "6")
  assert code == 0, err
  assert ("every item under them a candidate, the fewest best beams holding at least 7 "
          "items") in out
  report = json.loads((run_copy / ("eval_test_beam=6_ranking=cosine_candidate_level=1_"
                                   "candidate_budget=7.json")).read_text())
  assert (report["candidate_budget"], report["beam_size"]) == (7, 6)
  assert not (run_copy / "eval_test.json").exists()  # No evaluation at the run's own.
  code, _, err = dgi("eval", "--workdir", run_copy, "--ranking", "popularity")
  assert code == 1 and "--ranking" in err and "popularity" in err


def test_eval_under_other_settings_keeps_the_earlier_reports(run_copy, dgi):
  # The run's own settings, given or not, write eval_test.json; other settings write
  # beside it and leave it as it was.
  code, _, err = dgi("eval", "--workdir", run_copy, "--beam", "10", "--noexclude_history")
  assert code == 0, err
  own = (run_copy / "eval_test.json").read_bytes()
  own_plot = (run_copy / "plots" / "popularity_buckets_test.png").read_bytes()
  code, out, err = dgi("eval", "--workdir", run_copy, "--beam", "3", "--split", "validation")
  assert code == 0, err
  assert "eval_validation_beam=3.json" in out
  assert json.loads((run_copy / "eval_validation_beam=3.json").read_text())["beam_size"] == 3
  code, _, err = dgi("eval", "--workdir", run_copy, "--beam", "3")
  assert code == 0, err
  assert json.loads((run_copy / "eval_test_beam=3.json").read_text())["beam_size"] == 3
  assert (run_copy / "plots" / "popularity_buckets_test_beam=3.png").read_bytes().startswith(
      PNG_MAGIC)
  assert (run_copy / "eval_test.json").read_bytes() == own
  assert (run_copy / "plots" / "popularity_buckets_test.png").read_bytes() == own_plot
  assert json.loads(own)["beam_size"] == 10


def test_search_prints_top_k(tiny_run):
  trained = trained_run.load_trained(tiny_run.workdir)
  history = ",".join(trained.run_data.dataset.item_ids[:2])
  proc = _dgi("search", "--workdir", tiny_run.workdir, "--history", history, "--k", 3,
              "lavender face cream")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert lines[0].split()[:3] == ["rank", "beam", "score"]
  assert len(lines) == 4 and all(l.split()[4].startswith("item-") for l in lines[1:])


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_clear_error_without_checkpoint(tmp_path, make):
  workdir = tmp_path / "run"
  if make == "empty":
    workdir.mkdir()
  proc = _dgi("eval", "--workdir", workdir)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  expected = "does not exist" if make == "missing" else "holds no checkpoints"
  assert "dgi eval: error: " in proc.stderr and expected in proc.stderr


# Orbax leaves the reads of a failed (shape-mismatched) restore un-awaited.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_incompatible_checkpoint_config_is_reported(run_copy):
  for step_dir in checkpointing.checkpoint_dir(run_copy).iterdir():
    path = step_dir / "config" / "metadata"
    config = json.loads(path.read_text())
    config["model"]["d_model"] = 48  # Params were trained at 32.
    path.write_text(json.dumps(config))
  with pytest.raises(trained_run.WorkdirError, match="does not fit the model"):
    trained_run.load_trained(run_copy)
  for step_dir in checkpointing.checkpoint_dir(run_copy).iterdir():
    path = step_dir / "config" / "metadata"
    config = json.loads(path.read_text())
    del config["eval"]
    path.write_text(json.dumps(config))
  proc = _dgi("search", "--workdir", run_copy, "cream")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "lacks the section(s) eval" in proc.stderr
