"""Where a training session's wall time went: `TrainResult.timing` and train_timing.json."""

import json
import time
import types

import pytest

from dgi_jax import metrics_log, train
from run_fixtures import tiny_config

PARTS = metrics_log.PHASES + ("other",)


def _config(tfds_dir, **train_overrides):
  return tiny_config(tfds_dir, **dict(dict(num_steps=6, log_every=2, checkpoint_every=2,
                                           eval_every=0), **train_overrides))


def _timed_train(config, workdir, **kwargs):
  """(result, wall seconds measured around the call)."""
  start = time.perf_counter()
  result = train.train_and_evaluate(config, workdir, **kwargs)
  return result, time.perf_counter() - start


def _check_breakdown(timing, wall):
  seconds = timing["seconds"]
  assert set(seconds) == set(PARTS) | {"total"}
  assert all(seconds[name] >= 0.0 for name in seconds), seconds
  assert sum(seconds[name] for name in PARTS) == pytest.approx(seconds["total"], rel=1e-6)
  assert seconds["total"] <= wall


@pytest.fixture(scope="module")
def session(tmp_path_factory):
  """A 6-step run stopped after step 4, without validation; its resumption to the end
  with a validation pass that sleeps 0.3 s after steps 5 and 6 (the same train step: the
  persistent compilation cache of conftest.py spares a second compilation); then a call
  with nothing left to train."""
  root = tmp_path_factory.mktemp("timing")
  workdir, tfds_dir = root / "run", root / "tfds"
  first, first_wall = _timed_train(_config(tfds_dir), workdir, stop_at_step=4)
  first_file = metrics_log.read_timing(workdir)

  calls = []

  def evaluate_fn(params, run_data, item_embeddings):
    del params, run_data, item_embeddings
    calls.append(1)
    time.sleep(0.3)
    return {"hit@10": 0.5}

  resumed, resumed_wall = _timed_train(_config(tfds_dir, eval_every=1), workdir,
                                       evaluate_fn=evaluate_fn)
  resumed_file = metrics_log.read_timing(workdir)
  idle, _ = _timed_train(_config(tfds_dir), workdir)
  return types.SimpleNamespace(first=first, first_wall=first_wall, first_file=first_file,
                               resumed=resumed, resumed_wall=resumed_wall,
                               resumed_file=resumed_file, validations=len(calls),
                               idle=idle, idle_file=metrics_log.read_timing(workdir))


def test_a_new_run_reports_every_phase_within_its_wall_time(session):
  timing = session.first.timing
  _check_breakdown(timing, session.first_wall)
  assert timing["steps_run"] == 4
  seconds = timing["seconds"]
  # What this run did took time; what it skipped took none.
  for name in ("data", "init", "kmeans", "steps", "input", "checkpoint"):
    assert seconds[name] > 0.0, name
  assert seconds["validation"] == seconds["history_refresh"] == 0.0


def test_the_breakdown_is_written_to_the_work_directory(session):
  assert session.first_file == json.loads(json.dumps(
      dict(session.first.timing, first_step=0, step=4)))


def test_a_resumed_session_times_its_validation_and_runs_no_kmeans(session):
  timing = session.resumed.timing
  _check_breakdown(timing, session.resumed_wall)
  assert timing["steps_run"] == 2 and session.validations == 2
  assert timing["seconds"]["validation"] >= 2 * 0.3
  assert timing["seconds"]["kmeans"] == 0.0  # Restored, not initialised.
  assert session.resumed_file["first_step"] == 4 and session.resumed_file["step"] == 6


def test_a_session_with_nothing_to_train_keeps_the_last_breakdown(session):
  assert session.idle.step == 6 and session.idle.timing["steps_run"] == 0
  assert session.idle.timing["seconds"]["steps"] == 0.0
  assert session.idle_file == session.resumed_file


class _FakeClock:
  def __init__(self):
    self.now = 0.0

  def perf_counter(self):
    return self.now


def test_nested_phases_are_not_counted_twice_and_compile_is_the_first_steps_excess(
    monkeypatch):
  clock = _FakeClock()
  monkeypatch.setattr(metrics_log, "time", clock)
  timer = metrics_log.PhaseTimer()
  with timer.phase("init"):
    clock.now += 1.0
    with timer.phase("kmeans"):
      clock.now += 2.0
    clock.now += 0.5
  for seconds in (10.0, 0.2, 0.1, 0.3):  # The first step compiles.
    with timer.step():
      clock.now += seconds
  clock.now += 0.25  # Outside every phase.
  timing = timer.breakdown()
  seconds = timing["seconds"]
  assert timing["steps_run"] == 4
  assert seconds["init"] == pytest.approx(1.5) and seconds["kmeans"] == pytest.approx(2.0)
  assert seconds["compile"] == pytest.approx(10.0 - 0.2)  # Minus the median later step.
  assert seconds["steps"] == pytest.approx(0.2 + 0.2 + 0.1 + 0.3)
  assert seconds["other"] == pytest.approx(0.25)
  assert seconds["total"] == pytest.approx(14.35)
  text = metrics_log.format_timing(timing)
  assert len(text.splitlines()) == 3
  assert "compile 9.8 s" in text and "k-means 2.0 s" in text and "validation" not in text


def test_unknown_phase_is_refused():
  with pytest.raises(ValueError, match="unknown phase"):
    with metrics_log.PhaseTimer().phase("warmup"):
      pass
