"""Preemption safety: SIGTERM and Ctrl-C save and exit 0, SIGKILL + resume is exact, and
an unreadable latest checkpoint falls back to the previous one."""

import json
import os
import signal
import time

import jax
import numpy as np
import pytest

from conftest import load_config
from dgi_jax import checkpointing, preemption, train
from run_fixtures import start_training, wait_for_step

STEPS = 40


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _config(tfds_dir, **train_fields):
  config = load_config("tiny")
  with config.unlocked():
    config.data.tfds_dir = tfds_dir
    config.train.update(dict(num_steps=STEPS, log_every=1, checkpoint_every=1000))
    config.train.update(train_fields)
  return config


def _params(workdir):
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  try:
    return checkpointer.read_params(), checkpointer.latest_step()
  finally:
    checkpointer.close()


def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight_run(tfds_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  train.train_and_evaluate(_config(tfds_dir), workdir)
  return _params(workdir)[0]


def test_sigterm_saves_at_step_boundary_and_exits_zero(tfds_dir, tmp_path, straight_run):
  process = start_training(tfds_dir, tmp_path, STEPS)
  wait_for_step(process, tmp_path, 3)
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 0, output
  _, saved = _params(tmp_path)
  last_logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["step"]
  assert 3 <= saved < STEPS and saved == last_logged
  assert "SIGTERM" in output
  train.train_and_evaluate(_config(tfds_dir), tmp_path)  # Resume to the end.
  resumed, step = _params(tmp_path)
  assert step == STEPS
  _assert_same_params(resumed, straight_run)


def test_ctrl_c_saves_at_step_boundary_then_resume_is_bitwise_equal(tfds_dir, tmp_path,
                                                                   straight_run):
  process = start_training(tfds_dir, tmp_path, STEPS)
  wait_for_step(process, tmp_path, 3)
  process.send_signal(signal.SIGINT)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 0, output
  _, saved = _params(tmp_path)
  last_logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["step"]
  assert 3 <= saved < STEPS and saved == last_logged
  assert f"Ctrl-C: saved step {saved}" in output and "Traceback" not in output
  train.train_and_evaluate(_config(tfds_dir), tmp_path)  # Resume to the end.
  resumed, step = _params(tmp_path)
  assert step == STEPS
  _assert_same_params(resumed, straight_run)


def test_second_ctrl_c_aborts_at_once():
  # Python's own handler, as in a terminal, also where pytest runs with SIGINT ignored (a
  # background job, a pytest-xdist worker): the guard leaves an ignored SIGINT alone.
  outer = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with preemption.PreemptionGuard() as guard:
      os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler before the next line.
      assert guard.should_stop(1) and guard.reason == "Ctrl-C"
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # Not reached.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, outer)


def test_sigkill_at_random_step_then_resume_is_bitwise_equal(tfds_dir, tmp_path,
                                                              straight_run):
  process = start_training(tfds_dir, tmp_path, STEPS)
  wait_for_step(process, tmp_path, int(np.random.default_rng().integers(6, 20)))
  process.kill()
  process.wait()
  train.train_and_evaluate(_config(tfds_dir), tmp_path)
  resumed, step = _params(tmp_path)
  assert step == STEPS
  _assert_same_params(resumed, straight_run)


def test_unreadable_latest_checkpoint_falls_back_to_previous(tfds_dir, tmp_path,
                                                             straight_run):
  config = _config(tfds_dir, checkpoint_every=10)
  train.train_and_evaluate(config, tmp_path, stop_at_step=20)
  assert sorted(checkpointing.Checkpointer(tmp_path, read_only=True).all_steps()) == [10, 20]
  for path in (tmp_path / "checkpoints/20/state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(b"")  # A partially written array file.
  with pytest.warns(UserWarning, match="step 20 .* unreadable"):
    train.train_and_evaluate(config, tmp_path)
  assert any((tmp_path / checkpointing.QUARANTINE_SUBDIR).iterdir())
  resumed, step = _params(tmp_path)
  assert step == STEPS
  _assert_same_params(resumed, straight_run)
