"""All Orbax code: one checkpoint per saved step holding everything needed to resume.

A checkpoint holds `state` (params — codebooks included — optimiser state, step) and the
run's rng, the data iterator's position (one file per process, grain's handler), the
config (JSON) and the tokenizer (JSON). Restore order (see `train.py`): resume this run's
latest checkpoint, else `init_from` another run's params, else start from scratch.

Retention: the latest checkpoint is always kept (resume needs it) and, when a validation
metric is given, the best one too. `max_to_keep` + `best_fn` would keep the N best and can
delete the latest, so a preservation policy states both rules.
"""

import json
import os
import pathlib
import time
import warnings
from typing import Any, Dict, Optional

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

CHECKPOINT_SUBDIR = "checkpoints"
QUARANTINE_SUBDIR = "checkpoints_unreadable"  # Where unreadable step directories are moved.
KEEP_LATEST = 2


class CheckpointError(RuntimeError):
  """A work directory holds no checkpoint, or one that does not fit."""


def checkpoint_dir(workdir) -> pathlib.Path:
  return pathlib.Path(workdir) / CHECKPOINT_SUBDIR


class Checkpointer:
  """Saves and restores DGI training checkpoints under `<workdir>/checkpoints`."""

  def __init__(self, workdir, best_metric: Optional[str] = None, best_mode: str = "max",
               read_only: bool = False):
    self._workdir = pathlib.Path(workdir)
    # Two latest, so a corrupted newest checkpoint still leaves one to resume from.
    policies = [checkpoint_managers.LatestN(KEEP_LATEST)]
    best_fn = None
    if best_metric:
      best_fn = lambda metrics: metrics[best_metric]  # noqa: E731
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=best_mode, read_only=read_only, create=not read_only,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies))
    self._make_manager = lambda: ocp.CheckpointManager(  # noqa: E731
        checkpoint_dir(workdir).absolute(), options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data_iterator": grain.checkpoint.CheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler(),
                       "tokenizer": ocp.JsonCheckpointHandler()})
    self._manager = self._make_manager()

  # ------------------------------------------------------------------ queries
  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    return self._manager.best_step()

  def all_steps(self):
    return self._manager.all_steps()

  # ------------------------------------------------------------------ save
  def save(self, step: int, state: Any, rng: jax.Array, data_iterator, config_json: Dict,
           tokenizer_json: Dict, metrics: Optional[Dict[str, float]] = None) -> None:
    """Starts an asynchronous save of everything at `step` (call `wait` before relying on it)."""
    items = dict(state=ocp.args.StandardSave({"train_state": state, "rng": rng}),
                 config=ocp.args.JsonSave(config_json),
                 tokenizer=ocp.args.JsonSave(tokenizer_json))
    if data_iterator is not None:
      items["data_iterator"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  # ------------------------------------------------------------------ restore
  def restore(self, abstract_state: Any, abstract_rng: Any, data_iterator=None,
              step: Optional[int] = None):
    """Restores (state, rng) onto the shardings of the abstract arrays.

    Args:
      abstract_state: `jax.ShapeDtypeStruct` tree (from `jax.eval_shape`) whose `sharding`
        says where each restored array goes — so a checkpoint written on 8 devices restores
        onto 1, or onto several processes.
      abstract_rng: the same for the rng.
      data_iterator: a grain iterator whose position is set from the checkpoint.
      step: which step; default the latest.
    Returns:
      (state, rng, step).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError("no checkpoint to restore")
    items = dict(state=ocp.args.StandardRestore({"train_state": abstract_state,
                                                "rng": abstract_rng}))
    if data_iterator is not None:
      items["data_iterator"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored.state["train_state"], restored.state["rng"], step

  def restore_latest_good(self, abstract_state: Any, abstract_rng: Any, data_iterator=None):
    """`restore` of the newest readable checkpoint; None if there is no checkpoint at all.

    A checkpoint that fails to restore (truncated or corrupted files) is moved to
    `<workdir>/checkpoints_unreadable/` with a warning and the next older one is tried, so
    training resumes from the last good state instead of failing or starting over.
    """
    steps = sorted(self.all_steps(), reverse=True)
    for step in steps:
      try:
        return self.restore(abstract_state, abstract_rng, data_iterator, step)
      except Exception as error:  # pylint: disable=broad-except
        warnings.warn(f"checkpoint step {step} in {checkpoint_dir(self._workdir)} is "
                      f"unreadable ({type(error).__name__}: {error}); moving it to "
                      f"{QUARANTINE_SUBDIR}/ and trying an older one")
        self._quarantine(step)
    if steps:  # Starting over silently would discard a whole run: stop instead.
      raise CheckpointError(f"none of the checkpoints {steps} in {checkpoint_dir(self._workdir)}"
                            f" could be restored; they were moved to {QUARANTINE_SUBDIR}/")
    return None

  def _quarantine(self, step: int) -> None:
    self._manager.close()
    if jax.process_index() == 0:
      target = self._workdir / QUARANTINE_SUBDIR
      target.mkdir(parents=True, exist_ok=True)
      source = checkpoint_dir(self._workdir) / str(step)
      os.replace(source, target / f"{step}.{int(time.time())}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
    self._manager = self._make_manager()

  def read_params(self, step: Optional[int] = None) -> Any:
    """The saved parameters on this process's first device, whatever device count wrote them.

    The target is built from the checkpoint's own metadata (shapes, dtypes), so no model or
    config is needed, and the saved shardings (which name the writer's devices) are ignored.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError("no checkpoint to restore")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    metadata = self._manager.item_metadata(step)["state"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    return restored.state["train_state"]["params"]

  def restore_json(self, name: str, step: Optional[int] = None) -> Dict:
    """The config or tokenizer JSON saved with a checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError("no checkpoint to restore")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.JsonRestore()}))
    return restored[name]


def restore_params(workdir, abstract_params: Any, step: Optional[int] = None) -> Any:
  """Only the parameters of another run (for `init_from`), onto `abstract_params`' shardings.

  Raises `CheckpointError` naming the first leaf whose path or shape differs.
  """
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    if checkpointer.latest_step() is None:
      raise CheckpointError(f"{workdir}: no checkpoint under {checkpoint_dir(workdir)}")
    params = checkpointer.read_params(step)
  finally:
    checkpointer.close()
  want = dict(jax.tree_util.tree_flatten_with_path(abstract_params)[0])
  got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path in want.keys() | got.keys():
    shape_want = getattr(want.get(path), "shape", None)
    shape_got = getattr(got.get(path), "shape", None)
    if shape_want != shape_got:
      raise CheckpointError(f"{workdir}: parameter {jax.tree_util.keystr(path)} has shape "
                            f"{shape_got} in the checkpoint, the model needs {shape_want}")
  return jax.tree.map(lambda a, x: jax.device_put(x, a.sharding), abstract_params, params)


def dumps_config(config) -> Dict:
  """A ConfigDict as plain JSON (tuples become lists)."""
  return json.loads(config.to_json())
