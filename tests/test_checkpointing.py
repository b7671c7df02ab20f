"""Checkpoints restore under another process count (the data iterator's per-process files).

grain names the iterator state `process_<i>-of-<n>.json`. These tests write checkpoints
under one layout's names and restore them under another's in one process:
`checkpointing._process_layout` (the only place the restoring handler learns its index
and count) is patched for the reading side, and the files of a 2-process save are made by
renaming the 1-process ones. Real 1x8 <-> 2x4 restores run in test_multihost.py.
"""

import json
import logging
import shutil
import warnings

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgi_jax import checkpointing

STEP = 3  # Batches consumed before the save.


def _iterator():
  """A layout-invariant stream like the training one: shuffled global batches of indices."""
  ds = grain.MapDataset.range(64).shuffle(seed=7).repeat().batch(4, drop_remainder=True)
  return iter(ds.to_iter_dataset())


def _save(workdir):
  """A checkpoint at STEP with the iterator after STEP batches; returns the next batch."""
  iterator = _iterator()
  for _ in range(STEP):
    next(iterator)
  state = {"w": jnp.arange(6.0).reshape(2, 3)}
  checkpointer = checkpointing.Checkpointer(workdir)
  checkpointer.save(STEP, state, jax.random.PRNGKey(0), iterator, {"config": 1},
                    {"tokenizer": 1})
  checkpointer.close()
  return next(iterator)


def _iterator_dir(workdir):
  return checkpointing.checkpoint_dir(workdir) / str(STEP) / "data_iterator"


def _as_written_by(workdir, count: int, states=None):
  """Renames the 1-process iterator file to those `count` processes would have written."""
  directory = _iterator_dir(workdir)
  source = directory / "process_0-of-1.json"
  for i in range(count):
    target = directory / f"process_{i}-of-{count}.json"
    if states is None:
      shutil.copy(source, target)
    else:
      target.write_text(json.dumps(states[i]))
  source.unlink()


def _restore(workdir):
  """restore_latest_good with a fresh iterator; returns (step, restored iterator)."""
  abstract_state = {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32)}
  key = jax.random.PRNGKey(0)
  abstract_rng = jax.ShapeDtypeStruct(key.shape, key.dtype)
  iterator = _iterator()
  checkpointer = checkpointing.Checkpointer(workdir)
  try:
    state, _, step = checkpointer.restore_latest_good(abstract_state, abstract_rng, iterator)
  finally:
    checkpointer.close()
  np.testing.assert_array_equal(state["w"], np.arange(6.0).reshape(2, 3))
  return step, iterator


def _restored_without_quarantine(workdir, expected_batch):
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # The quarantine path warns.
    step, iterator = _restore(workdir)
  assert step == STEP
  np.testing.assert_array_equal(next(iterator), expected_batch)
  assert not (workdir / checkpointing.QUARANTINE_SUBDIR).exists()


@pytest.mark.parametrize("written, reading", [(2, (0, 1)), (1, (0, 2)), (1, (1, 2)),
                                              (2, (2, 4))])
def test_iterator_restores_under_another_process_count(tmp_path, monkeypatch, written,
                                                       reading):
  expected = _save(tmp_path)
  if written != 1:
    _as_written_by(tmp_path, written)
  monkeypatch.setattr(checkpointing, "_process_layout", lambda: reading)
  _restored_without_quarantine(tmp_path, expected)


def test_same_layout_reads_its_own_file(tmp_path, monkeypatch):
  expected = _save(tmp_path)
  state = json.loads((_iterator_dir(tmp_path) / "process_0-of-1.json").read_text())
  # Process 1's file is broken: process 1 must read it (and fail), process 0 must not.
  _as_written_by(tmp_path, 2, states=[state, state])
  (_iterator_dir(tmp_path) / "process_1-of-2.json").write_text("{truncated")
  monkeypatch.setattr(checkpointing, "_process_layout", lambda: (0, 2))
  _restored_without_quarantine(tmp_path, expected)
  monkeypatch.setattr(checkpointing, "_process_layout", lambda: (1, 2))
  with pytest.warns(UserWarning, match="unreadable"), pytest.raises(checkpointing.CheckpointError):
    _restore(tmp_path)


def test_layout_dependent_states_are_refused_without_quarantine(tmp_path, monkeypatch):
  _save(tmp_path)
  state = json.loads((_iterator_dir(tmp_path) / "process_0-of-1.json").read_text())
  other = json.loads(json.dumps(state).replace(str(STEP), str(STEP + 1)))
  assert other != state
  _as_written_by(tmp_path, 2, states=[state, other])
  monkeypatch.setattr(checkpointing, "_process_layout", lambda: (0, 1))
  with pytest.raises(checkpointing.CheckpointLayoutError, match="differ"):
    _restore(tmp_path)
  assert (_iterator_dir(tmp_path) / "process_1-of-2.json").exists()  # Left in place.
  assert not (tmp_path / checkpointing.QUARANTINE_SUBDIR).exists()


def test_incomplete_iterator_files_are_quarantined(tmp_path, monkeypatch):
  _save(tmp_path)
  _as_written_by(tmp_path, 2)
  (_iterator_dir(tmp_path) / "process_1-of-2.json").unlink()  # A lost file.
  monkeypatch.setattr(checkpointing, "_process_layout", lambda: (0, 1))
  with pytest.warns(UserWarning, match=r"process\(es\) \[1\] of 2 is missing"):
    with pytest.raises(checkpointing.CheckpointError, match="could be restored"):
      _restore(tmp_path)
  assert any((tmp_path / checkpointing.QUARANTINE_SUBDIR).glob(f"{STEP}.*"))


def test_read_only_open_writes_nothing_logs_no_warning_and_refuses_saves(tmp_path, caplog):
  _save(tmp_path)
  files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
  # Orbax's own read-only mode warns at every open (which `dgi eval` would print).
  with caplog.at_level(logging.WARNING, logger="absl"):
    checkpointer = checkpointing.Checkpointer(tmp_path, read_only=True)
    try:
      assert checkpointer.all_steps() == [STEP]
      assert checkpointer.read_json_items(STEP)["config"] == {"config": 1}
      with pytest.raises(RuntimeError, match="opened read-only"):
        checkpointer.save(STEP + 1, {"w": jnp.zeros((2, 3))}, jax.random.PRNGKey(0), None,
                          {"config": 1}, {"tokenizer": 1})
    finally:
      checkpointer.close()
    checkpointing.Checkpointer(tmp_path / "none", read_only=True).close()
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == files
