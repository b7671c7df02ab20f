"""A work directory survives wrong commands: no checkpoint is lost to another config, a
changed dataset or a second run; damaged checkpoints are skipped by every command."""

import json
import logging as std_logging
import pathlib
import shutil
import subprocess
import sys
import warnings

from absl import logging as absl_logging
import jax
import jax.numpy as jnp
import pytest

from conftest import REPO_ROOT, load_config
from dgi_jax import checkpointing, resume_checks
from dgi_jax import trained_run
from run_fixtures import snapshot, start_training, wait_for_step, write_dataset

TINY = ("--config", "configs/tiny.py")


def _steps(workdir):
  folder = pathlib.Path(workdir) / checkpointing.CHECKPOINT_SUBDIR
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _logged_steps(workdir, kind="train"):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [r["step"] for r in map(json.loads, lines) if r["kind"] == kind]


def _quarantined(workdir):
  """The steps moved to checkpoints_unreadable/ (as `<step>.<time>` folders)."""
  folder = pathlib.Path(workdir) / checkpointing.QUARANTINE_SUBDIR
  if not folder.exists():
    return []
  return sorted(p.name.split(".")[0] for p in folder.iterdir() if p.is_dir())


def test_another_config_is_refused_and_no_config_resumes_with_the_saved_one(dgi, run_copy,
                                                                           tiny_run):
  # Another model shape: refused, naming the field; every checkpoint stays.
  code, _, err = dgi("train", "--workdir", run_copy, *TINY,
                     f"--config.data.tfds_dir={tiny_run.tfds_dir}", "--config.model.d_model=64")
  assert code == 1
  assert "model.d_model (checkpoint 32, now 64)" in err
  assert _steps(run_copy) == [10, 20] and not _quarantined(run_copy)
  # No --config (which used to mean the default config): the work directory's config.
  code, out, err = dgi("train", "--workdir", run_copy, "--config.train.num_steps=25")
  assert code == 0, err
  assert "using the config saved" in out
  assert _steps(run_copy) == [20, 25] and not _quarantined(run_copy)
  assert _logged_steps(run_copy) == [5, 10, 15, 20, 25]  # Resumed at 20, not 0.
  config = trained_run.read_config(run_copy)
  assert (config.model.d_model, config.train.num_steps) == (32, 25)
  # The end of a run is a summary, not a dict.
  assert "step 25 of 25: loss " in out and f"next: dgi eval --workdir {run_copy}" in out
  assert f"checkpoint: {run_copy}/checkpoints/25" in out and "{" not in out


def test_resume_compares_only_the_fields_that_shape_the_run():
  saved, config = load_config("tiny"), load_config("tiny")
  with config.unlocked():  # How long, where, how it is evaluated; a moved dataset; the
    # same products computed another way.
    config.train.num_steps, config.train.log_every = 99, 7
    config.data.tfds_dir, config.data.dataset = "/elsewhere/tfds", "/moved/data"
    config.eval.k = 5
    config.model.dense_gradient = "autodiff"
  assert not resume_checks.differing_fields(saved, config)
  with config.unlocked():
    config.loss.beta, config.optim.backbone_lr = 0.5, 1.0
  assert resume_checks.differing_fields(saved, config) == [
      ("loss.beta", 0.25, 0.5), ("optim.backbone_lr", 0.001, 1.0)]


def test_dataset_change_is_refused_unless_allowed_and_eval_says_so(dgi, tiny_run,
                                                                  tmp_path):
  data = write_dataset(tmp_path / "data")
  run = tmp_path / "run"
  train = ("train", "--workdir", run, *TINY, f"--config.data.tfds_dir={tiny_run.tfds_dir}",
           f"--config.data.dataset={data}", "--config.train.checkpoint_every=10")
  code, out, err = dgi(*train, "--config.train.num_steps=10")
  assert code == 0, err
  # The first build of a dataset prints no TFDS download lines or temporary folders.
  assert "Downloading" not in out + err and ".incomplete-" not in out + err
  # Nor the config dump TFDS logs (through absl, to the process's own stderr).
  record = std_logging.LogRecord("absl", std_logging.WARNING,
                                 "/x/tensorflow_datasets/core/dataset_builder.py", 1,
                                 "Using custom data configuration: ...", (), None)
  assert not all(f.filter(record) for f in absl_logging.get_absl_logger().filters)

  with open(data / "train.jsonl", "a") as f:  # The data changes under the run.
    f.write(json.dumps({"query": "red lamp", "history": [], "item_id": "it3"}) + "\n")
  code, _, err = dgi(*train, "--config.train.num_steps=20")
  assert code == 1
  assert "was trained on dataset" in err and "--allow_dataset_change" in err
  assert _steps(run) == [10] and not _quarantined(run)

  code, _, err = dgi("eval", "--workdir", run)
  assert code == 0, err
  assert "dgi eval: warning: the dataset files changed since checkpoint step 10" in err

  code, _, err = dgi(*train, "--config.train.num_steps=20", "--allow_dataset_change")
  assert code == 0, err
  assert _steps(run) == [10, 20]


def _damage(step_dir: pathlib.Path, how: str) -> None:
  if how == "deleted_config":
    (step_dir / "config" / "metadata").unlink()
  else:  # A partially written array file.
    for path in (step_dir / "state" / "d").iterdir():
      path.write_bytes(path.read_bytes()[:8])


# Orbax leaves the reads of a failed restore (a truncated file) un-awaited.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("command, how", [("eval", "deleted_config"),
                                          ("eval", "truncated_state"),
                                          ("search", "deleted_config"),
                                          ("index", "truncated_state")])
def test_damaged_latest_checkpoint_falls_back_with_a_warning(dgi, run_copy, tmp_path,
                                                            command, how):
  _damage(run_copy / "checkpoints" / "20", how)
  before = snapshot(run_copy / "checkpoints")
  args = {"eval": ("eval", "--workdir", run_copy),
          "search": ("search", "--workdir", run_copy, "--k", "3", "red lamp"),
          "index": ("index", "--workdir", run_copy, "--out", tmp_path / "sids.jsonl")}
  code, out, err = dgi(*args[command])
  assert code == 0, err
  assert f"dgi {command}: warning: checkpoint step 20 in " in err and "unreadable" in err
  assert snapshot(run_copy / "checkpoints") == before  # Serving moves nothing.
  if command == "eval":
    report = json.loads((run_copy / "eval_test.json").read_text())
    assert report["checkpoint"] == {"step": 10, "selected": "fallback"}
    assert "checkpoint: step 10 (fallback)" in out


def test_train_resume_never_uses_a_checkpoint_eval_cannot_read(dgi, run_copy, tiny_run):
  (run_copy / "checkpoints" / "20" / "config" / "metadata").unlink()
  code, out, err = dgi("train", "--workdir", run_copy, *TINY,
                       f"--config.data.tfds_dir={tiny_run.tfds_dir}")
  assert code == 0, err
  assert "dgi train: warning: checkpoint step 20 in " in err and "unreadable" in err
  assert "Resumed from step 10" in out
  assert _quarantined(run_copy) == ["20"] and _steps(run_copy) == [10, 20]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # A fallback would warn.
    assert trained_run.load_trained(run_copy).step == 20


def test_resumed_run_logs_each_step_once(dgi, run_copy):
  # A run killed after it logged steps 15 and 20 (and half a line) but before its
  # checkpoint 20 was written.
  shutil.rmtree(run_copy / "checkpoints" / "20")
  with open(run_copy / "metrics.jsonl", "a") as f:
    f.write('{"step": 2')
  code, _, err = dgi("train", "--workdir", run_copy)
  assert code == 0, err
  assert _logged_steps(run_copy) == [5, 10, 15, 20]


def test_a_save_the_disk_has_no_room_for_is_refused_before_it_starts(tmp_path,
                                                                    monkeypatch):
  checkpointer = checkpointing.Checkpointer(tmp_path)
  monkeypatch.setattr(checkpointing, "_free_bytes", lambda directory: 4096)
  with pytest.raises(checkpointing.DiskFullError,
                     match=r"no room for checkpoint step 3: 0.0 MiB free .* needs up to"):
    checkpointer.save(3, {"w": jnp.zeros((1000,))}, jax.random.PRNGKey(0), None,
                      {"config": 1}, {"tokenizer": 1})
  checkpointer.close()
  assert not list(checkpointing.checkpoint_dir(tmp_path).iterdir())  # Nothing started.


def test_second_train_is_refused_and_the_lock_dies_with_its_holder(dgi, tiny_run, tmp_path):
  workdir = tmp_path / "run"
  first = start_training(tiny_run.tfds_dir, workdir, steps=1_000_000)
  try:
    wait_for_step(first, workdir, 8)  # Checkpoint 5 is written by then.
    second = subprocess.run(
        [sys.executable, "-m", "dgi_jax.main", "train", *TINY, "--workdir", str(workdir),
         f"--config.data.tfds_dir={tiny_run.tfds_dir}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"dgi train: error: work directory {workdir} is in use by another `dgi train` "
        f"(pid {first.pid}); wait for it to finish (or stop it), or train in another "
        "--workdir"]
    assert first.poll() is None  # The first run goes on.
  finally:
    first.kill()  # SIGKILL: no chance to release anything.
    first.wait()
  latest = _steps(workdir)[-1]
  code, _, err = dgi("train", "--workdir", workdir, f"--config.train.num_steps={latest + 1}")
  assert code == 0, err  # The lock went with its holder.
  steps = _logged_steps(workdir)
  assert steps == sorted(set(steps)) and steps[-1] == latest + 1  # One writer at a time.
