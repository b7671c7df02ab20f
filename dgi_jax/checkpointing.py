"""All Orbax code: one checkpoint per saved step holding everything needed to resume.

A checkpoint holds `state` (params — codebooks included — optimiser state, step) and the
run's rng, the data iterator's position (one file per process in grain's format, read back
by `LayoutTolerantIteratorHandler` under any process count), the config (JSON), the
tokenizer (JSON) and a run record (JSON: the dataset's version, see `resume_checks.py`;
checkpoints of older versions lack it). Restore order (see `train.py`): resume this run's
latest checkpoint, else `init_from` another run's params, else start from scratch.

Only an unreadable checkpoint is moved aside (to `checkpoints_unreadable/`): one that
reads but does not fit (another model shape, a config or dataset the caller's `check`
refuses) stays where it is and the restore stops with the reason.

Retention: the latest checkpoint is always kept (resume needs it) and, when a validation
metric is given, the best one too. `max_to_keep` + `best_fn` would keep the N best and can
delete the latest, so a preservation policy states both rules.
"""

import dataclasses
import json
import re
import shutil
import time
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

from etils import epath
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from dgi_jax import errors, paths, sharding

CHECKPOINT_SUBDIR = "checkpoints"
QUARANTINE_SUBDIR = "checkpoints_unreadable"  # Where unreadable step directories are moved.
KEEP_LATEST = 2
JSON_ITEMS = ("config", "tokenizer")  # JSON items every checkpoint holds.
RUN_ITEM = "run"  # The run record; optional (older checkpoints lack it).
# restore_latest_good's verdicts on a step, ordered: every process takes the worst one.
_OK, _UNREADABLE, _LAYOUT, _REFUSED = range(4)


class CheckpointError(errors.UserError, RuntimeError):
  """A work directory holds no checkpoint, or one that does not fit."""


class CheckpointMismatchError(CheckpointError):
  """A readable checkpoint whose arrays do not fit the model (another shape or tree)."""


class DiskFullError(CheckpointError):
  """The work directory's disk has no room for the next checkpoint (nothing was written)."""


class CheckpointLayoutError(CheckpointError):
  """A readable checkpoint that cannot be restored under this process count.

  Not a damaged checkpoint: `restore_latest_good` raises it instead of quarantining.
  """


def checkpoint_dir(workdir) -> epath.Path:
  return paths.as_path(workdir) / CHECKPOINT_SUBDIR


_ITERATOR_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


class LayoutTolerantIteratorHandler(grain.checkpoint.CheckpointHandler):
  """grain's iterator handler, restorable under another process count.

  grain writes one `process_<i>-of-<n>.json` per process and reads back only the file of
  the reader's own index and count, so a checkpoint written by 2 processes cannot be read
  by 1 or 4. Our training stream is layout-invariant (global batches; every process is at
  the same position of the same global stream, `pipeline.make_train_iterator`), so any
  process's state is every process's state. This handler saves as grain does and
  restores this process's file when the layout is unchanged; otherwise it reads all
  files of the writing layout, checks they form one complete layout and hold the same
  state, and uses it. (Every process reads every file, so all make the same decision;
  that is n small reads per process, once, when a run moves to another process count.)
  """

  def restore(self, directory: epath.Path, item=None, args=None):
    """Sets `item`'s state from the checkpoint; returns it, or the error that stopped it.

    The error is returned, not raised: raising would skip Orbax's end-of-restore barrier on
    this process alone and leave the others waiting there. `Checkpointer.restore` raises it
    after the barrier.
    """
    item = item or args.item
    try:
      index, count = _process_layout()
      own = directory / f"process_{index}-of-{count}.json"
      text = (own.read_text() if own.exists()
              else _layout_invariant_state(directory, index, count))
      item.set_state(json.loads(text))
      item.start_prefetch()
    except Exception as error:  # pylint: disable=broad-except
      return error
    return item


def _process_layout():
  """(this process's index, process count): the names of the iterator files it reads."""
  return jax.process_index(), jax.process_count()


def _layout_invariant_state(directory: epath.Path, index: int, count: int) -> str:
  """The one iterator state (JSON text) that every file of another layout holds.

  Raises CheckpointError for a damaged checkpoint (files of several layouts, a missing or
  unparsable file), CheckpointLayoutError when the files hold different states.
  """
  files = {}
  for path in directory.iterdir():
    match = _ITERATOR_FILE.fullmatch(path.name)
    if match:
      files[int(match[1]), int(match[2])] = path
  counts = {n for _, n in files}
  if len(counts) != 1:
    raise CheckpointError(f"{directory}: expected the iterator files of one process layout, "
                          f"found {sorted(p.name for p in files.values()) or 'none'}")
  (written_count,) = counts
  missing = sorted(set(range(written_count)) - {i for i, _ in files})
  if missing:
    raise CheckpointError(f"{directory}: iterator state of process(es) {missing} of "
                          f"{written_count} is missing")
  texts, states = {}, {}
  for (i, _), path in sorted(files.items()):
    texts[i] = path.read_text()
    try:
      states[i] = json.loads(texts[i])
    except json.JSONDecodeError as error:
      raise CheckpointError(f"{path}: not an iterator state ({error})") from None
  differing = [i for i in states if states[i] != states[0]]
  if differing:
    raise CheckpointLayoutError(
        f"{directory}: the iterator states of processes {differing} differ from process "
        f"0's, so the data position depends on the {written_count}-process layout; "
        f"process {index} of {count} cannot take one of them. Resume on "
        f"{written_count} process(es).")
  return texts[0]


@ocp.args.register_with_handler(LayoutTolerantIteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(LayoutTolerantIteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
  item: Any


class Checkpointer:
  """Saves and restores DGI training checkpoints under `<workdir>/checkpoints`."""

  def __init__(self, workdir, best_metric: Optional[str] = None, best_mode: str = "max",
               read_only: bool = False):
    """Opens `<workdir>/checkpoints`; `read_only` neither creates it nor saves or moves
    anything there."""
    self._workdir = paths.as_path(workdir)
    self._read_only = read_only
    # Two latest, so a corrupted newest checkpoint still leaves one to resume from.
    policies = [checkpoint_managers.LatestN(KEEP_LATEST)]
    best_fn = None
    if best_metric:
      best_fn = lambda metrics: metrics[best_metric]  # noqa: E731
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    # Read-only is enforced here (`save` and `_quarantine` refuse), not with Orbax's
    # CheckpointManagerOptions.read_only, which logs two warnings at every open (and made
    # `dgi eval` silence absl logging). A manager that does not create the directory and
    # is never asked to save writes nothing: it deletes only after a save.
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=best_mode, create=not read_only,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies))
    self._make_manager = lambda: ocp.CheckpointManager(  # noqa: E731
        checkpoint_dir(self._workdir), options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data_iterator": LayoutTolerantIteratorHandler(),
                       "config": ocp.JsonCheckpointHandler(),
                       "tokenizer": ocp.JsonCheckpointHandler(),
                       RUN_ITEM: ocp.JsonCheckpointHandler()})
    self._manager = self._make_manager()

  # ------------------------------------------------------------------ queries
  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    return self._manager.best_step()

  def all_steps(self):
    return self._manager.all_steps()

  def best_step_by(self, metric: str, mode: str = "max") -> Optional[int]:
    """The step `best_step` gives when opened with `best_metric=metric` (ties: the newest),
    for a reader that learns the metric from a checkpoint's config; None when no
    checkpoint carries validation metrics."""
    sign = 1.0 if mode == "max" else -1.0
    scored = [(sign * saved[metric], step) for step in self.all_steps()
              if (saved := self._manager.metrics(step)) is not None]
    return max(scored)[1] if scored else None

  # ------------------------------------------------------------------ save
  def save(self, step: int, state: Any, rng: jax.Array, data_iterator, config_json: Dict,
           tokenizer_json: Dict, metrics: Optional[Dict[str, float]] = None,
           run_record: Optional[Dict] = None) -> None:
    """Starts an asynchronous save of everything at `step` (call `wait` before relying on it)."""
    self._check_writable(f"save step {step}")
    self.check_space(state, tokenizer_json, step)
    items = dict(state=ocp.args.StandardSave({"train_state": state, "rng": rng}),
                 config=ocp.args.JsonSave(config_json),
                 tokenizer=ocp.args.JsonSave(tokenizer_json))
    if run_record is not None:
      items[RUN_ITEM] = ocp.args.JsonSave(run_record)
    if data_iterator is not None:
      items["data_iterator"] = IteratorSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def _check_writable(self, what: str) -> None:
    if self._read_only:
      raise RuntimeError(f"cannot {what}: {checkpoint_dir(self._workdir)} was opened "
                         "read-only")

  def check_space(self, state: Any, tokenizer_json: Dict, step: Optional[int] = None) -> None:
    """Raises DiskFullError when the disk has no room for a checkpoint of `state`.

    `save` calls it before Orbax starts, and training before its first step (so a full
    disk stops a run before it trains, not at its first checkpoint). A save that runs
    out of space fails in Orbax's background threads, with pages of their tracebacks and
    a temporary folder left behind; this check turns the usual case into one error
    naming the sizes. The estimate is the arrays' raw size (an upper bound) plus the
    tokenizer; local, single-process work directories only (one process's refusal would
    leave the others waiting in the save).
    """
    if paths.is_uri(self._workdir) or jax.process_count() > 1:
      return
    need = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))
    need += len(json.dumps(tokenizer_json)) + (1 << 20)
    free = _free_bytes(checkpoint_dir(self._workdir))
    if free < need:
      what = "a checkpoint" if step is None else f"checkpoint step {step}"
      raise DiskFullError(
          f"no room for {what}: {free / 2**20:.1f} MiB free on the disk of "
          f"{checkpoint_dir(self._workdir)}, a checkpoint needs up to {need / 2**20:.1f} "
          "MiB; free some space and rerun the same command to resume"
          + ("" if self.latest_step() is None else f" from step {self.latest_step()}"))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    try:
      self._manager.wait_until_finished()
    finally:  # A failed save re-raises here; the manager's threads must stop anyway.
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
      items["data_iterator"] = IteratorRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if isinstance(restored.get("data_iterator"), Exception):
      raise restored["data_iterator"]
    return restored.state["train_state"], restored.state["rng"], step

  def read_json_items(self, step: int) -> Dict[str, Any]:
    """The JSON items of `step`: config, tokenizer and, if saved, the run record."""
    names = list(JSON_ITEMS)
    if (checkpoint_dir(self._workdir) / str(step) / RUN_ITEM).exists():
      names.append(RUN_ITEM)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.JsonRestore() for name in names}))
    return {name: restored.get(name) for name in (*JSON_ITEMS, RUN_ITEM)}

  def newest_json_items(self) -> Optional[Tuple[int, Dict[str, Any]]]:
    """(step, `read_json_items`) of the newest step whose JSON items read; else None.

    Moves nothing: `restore_latest_good` deals with unreadable steps.
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return step, self.read_json_items(step)
      except Exception:  # pylint: disable=broad-except
        continue
    return None

  def _saved_shapes(self, step: int):
    """`_shapes` of `step`'s train state, from its metadata (no array is read)."""
    return _shapes(self._manager.item_metadata(step)["state"]["train_state"])

  def _check_fits(self, step: int, saved, abstract_state: Any) -> None:
    """Raises CheckpointMismatchError when the `saved` shapes of `step` differ from
    `abstract_state`'s in tree or shape.

    Of a train state only the params and the history table are compared: the optimiser
    state's tree follows from the params and the optimiser config (which the caller's
    `check` compares), and Orbax may store its empty and masked nodes differently from
    how the live tree has them. A history table whose row count differs (another
    catalogue) is refused here rather than failing to read, which would quarantine it.
    """
    wanted = _shapes(abstract_state)
    compared = (("params",), ("history_table",))
    if any(path[:1] == ("params",) for path in wanted):
      wanted, saved = ({p: s for p, s in shapes.items() if p[:1] in compared}
                       for shapes in (wanted, saved))
    differing = sorted(saved.keys() ^ wanted.keys()) or sorted(
        path for path in saved if saved[path] != wanted[path])
    if differing:
      path = differing[0]
      raise CheckpointMismatchError(
          f"checkpoint step {step} in {checkpoint_dir(self._workdir)} does not fit the "
          f"model: {'.'.join(path)} has shape {saved.get(path, 'none')} in the checkpoint, "
          f"the model needs {wanted.get(path, 'none')}")

  def _try_restore(self, step, abstract_state, abstract_rng, data_iterator, check):
    """(verdict, restored or None, error or None) of one step; see restore_latest_good."""
    try:
      items, saved = self.read_json_items(step), self._saved_shapes(step)
    except Exception as error:  # pylint: disable=broad-except
      return _UNREADABLE, None, error
    try:
      if check is not None:
        check(step, items)
      self._check_fits(step, saved, abstract_state)
    except errors.UserError as error:
      return _REFUSED, None, error
    try:
      return _OK, self.restore(abstract_state, abstract_rng, data_iterator, step), None
    except CheckpointLayoutError as error:
      return _LAYOUT, None, error
    except Exception as error:  # pylint: disable=broad-except
      return _UNREADABLE, None, error

  def restore_latest_good(self, abstract_state: Any, abstract_rng: Any, data_iterator=None,
                          check: Optional[Callable[[int, Dict[str, Any]], None]] = None):
    """`restore` of the newest readable checkpoint; None if there is no checkpoint at all.

    A checkpoint that fails to read (truncated or corrupted files in any item: state,
    iterator, config, tokenizer) is moved to `<workdir>/checkpoints_unreadable/` with a
    warning and the next older one is tried, so training resumes from the last good state
    instead of failing or starting over. A readable one that does not fit is left in
    place and its error raised: `CheckpointMismatchError` (other array shapes), whatever
    `errors.UserError` `check(step, json_items)` raises (the caller's config or dataset
    checks), and `CheckpointLayoutError` (a sound checkpoint that this process count
    cannot take). With several processes, they agree: if one cannot restore a step, none
    uses it (one process training from another step than the rest would deadlock in the
    first collective).
    """
    steps = sorted(self.all_steps(), reverse=True)
    for step in steps:
      verdict, restored, error = self._try_restore(step, abstract_state, abstract_rng,
                                                   data_iterator, check)
      verdict = _worst_outcome(verdict)
      if verdict == _OK:
        return restored
      if verdict == _REFUSED:
        raise error if isinstance(error, errors.UserError) else CheckpointError(
            f"another process refused checkpoint step {step} in "
            f"{checkpoint_dir(self._workdir)} (see its log)")
      if verdict == _LAYOUT:
        raise error if isinstance(error, CheckpointLayoutError) else CheckpointLayoutError(
            f"another process cannot restore checkpoint step {step} in "
            f"{checkpoint_dir(self._workdir)} under this process layout (see its log)")
      reason = (f"{type(error).__name__}: {errors.one_line(error)}" if error is not None
                else "another process could not read it, see its log")
      warnings.warn(f"checkpoint step {step} in {checkpoint_dir(self._workdir)} is "
                    f"unreadable ({reason}); moving it to {QUARANTINE_SUBDIR}/ and trying "
                    "an older one")
      self._quarantine(step)
    if steps:  # Starting over silently would discard a whole run: stop instead.
      raise CheckpointError(f"none of the checkpoints {steps} in {checkpoint_dir(self._workdir)}"
                            f" could be restored; they were moved to {QUARANTINE_SUBDIR}/")
    return None

  def _quarantine(self, step: int) -> None:
    self._check_writable(f"move step {step} aside")
    self._manager.close()
    if jax.process_index() == 0:
      target = self._workdir / QUARANTINE_SUBDIR
      target.mkdir(parents=True, exist_ok=True)
      note = target / "README.txt"
      if not note.exists():
        # Object stores have no empty folders, and a rename into one that does not exist
        # fails (fsspec): the note makes the folder exist.
        note.write_text("Checkpoint steps that could not be restored; see the warning in "
                        "the training log.\n")
      source = checkpoint_dir(self._workdir) / str(step)
      source.rename(target / f"{step}.{int(time.time())}")
    sharding.sync_processes(f"quarantine checkpoint {step}")
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

  def restore_params(self, abstract_params: Any, step: Optional[int] = None) -> Any:
    """The parameters of `step` (default the latest), onto `abstract_params`' shardings.

    Raises `CheckpointError` naming the first leaf whose path or shape differs.
    """
    params = self.read_params(step)
    want = dict(jax.tree_util.tree_flatten_with_path(abstract_params)[0])
    got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path in want.keys() | got.keys():
      shape_want = getattr(want.get(path), "shape", None)
      shape_got = getattr(got.get(path), "shape", None)
      if shape_want != shape_got:
        raise CheckpointError(f"{self._workdir}: parameter {jax.tree_util.keystr(path)} has "
                              f"shape {shape_got} in the checkpoint, the model needs "
                              f"{shape_want}")
    return jax.tree.map(lambda a, x: jax.device_put(x, a.sharding), abstract_params, params)

  def restore_json(self, name: str, step: Optional[int] = None) -> Dict:
    """The config or tokenizer JSON saved with a checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError("no checkpoint to restore")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.JsonRestore()}))
    return restored[name]


def _shapes(tree: Any) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Leaf path (names, indices as text) -> shape, alike for arrays, abstract arrays and
  Orbax metadata (which stores attributes and tuples as dict keys and lists)."""
  def name(key) -> str:
    for attr in ("name", "key", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {tuple(name(k) for k in path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _free_bytes(directory) -> int:
  """Free bytes on the file system holding `directory` (or its nearest existing parent)."""
  path = paths.as_path(directory)
  while not path.exists() and path.parent != path:
    path = path.parent
  return shutil.disk_usage(str(path)).free


def _worst_outcome(code: int) -> int:
  """The largest of every process's `code` (just `code` on one process)."""
  if jax.process_count() == 1:
    return code
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.max(multihost_utils.process_allgather(np.int32(code))))


def restore_params(workdir, abstract_params: Any, step: Optional[int] = None) -> Any:
  """Only the parameters of another run (for `init_from`): `Checkpointer.restore_params`
  of `step` (default the latest) of `workdir`."""
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    if checkpointer.latest_step() is None:
      raise CheckpointError(f"{workdir}: no checkpoint under {checkpoint_dir(workdir)}")
    return checkpointer.restore_params(abstract_params, step)
  finally:
    checkpointer.close()


def dumps_config(config) -> Dict:
  """A ConfigDict as plain JSON (tuples become lists)."""
  return json.loads(config.to_json())
