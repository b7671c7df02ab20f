"""Opening a trained run's work directory: config, tokenizer and params of a checkpoint.

`dgi eval`, `dgi search` and `dgi index` read everything from the work directory, through
one open of its checkpoints (`load_trained`): the config and the tokenizer saved with the
checkpoint, the parameters of the best checkpoint
(by `train.best_metric`, when validation ran) or else the latest, and the run's dataset
(`run_setup.prepare_run_data`, which reuses `<data.tfds_dir or workdir/tfds>`).
Every problem raises `WorkdirError` with a message meant for the command line.

A damaged checkpoint (a deleted or truncated file in any of its items) is skipped with a
warning and the next one is used: the best, then the others newest first. Nothing is
moved (these commands only read); `dgi train` moves unreadable steps aside.
"""

from typing import Any, Callable, List, NamedTuple, Optional, Tuple
import warnings

import jax
import ml_collections

from dgi_jax import checkpointing, errors, paths, resume_checks, run_setup
from dgi_jax.data import jsonl_format
from dgi_jax.data import tokenizer as tokenizer_lib
from dgi_jax.models.dgi import DGIModel

# Sections the commands read; a config saved by an older version may lack one.
REQUIRED_SECTIONS = ("data", "model", "optim", "train", "eval")


_REASON_CHARS = 300  # Of a read error quoted in a warning (Orbax's can be pages long).


class WorkdirError(errors.UserError, RuntimeError):
  """A work directory is missing, holds no checkpoint, or one that does not fit."""


class _Unreadable(Exception):
  """A checkpoint item failed to read: damaged files, not a config that does not fit."""


class TrainedRun(NamedTuple):
  config: ml_collections.ConfigDict
  model: DGIModel
  params: Any
  run_data: run_setup.RunData
  step: Optional[int] = None  # The checkpoint the params come from.
  selected: str = ""  # Why that one: 'best', 'latest' or 'fallback' (the others failed).


def _open(workdir) -> checkpointing.Checkpointer:
  workdir = paths.as_path(workdir)  # Local or gs://.
  if not workdir.is_dir():
    raise WorkdirError(f"work directory {workdir} "
                       + ("is a file" if workdir.exists() else "does not exist"))
  if not checkpointing.checkpoint_dir(workdir).is_dir():
    raise WorkdirError(f"{workdir} holds no checkpoints (no "
                       f"{checkpointing.CHECKPOINT_SUBDIR}/ folder); run `dgi train` first")
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  if checkpointer.latest_step() is None:
    checkpointer.close()
    raise WorkdirError(f"{checkpointing.checkpoint_dir(workdir)} holds no finished "
                       "checkpoint; run `dgi train` first")
  return checkpointer


# Fields added after checkpoints were first written, with the behaviour those checkpoints
# were trained with (which may differ from today's default): a saved config without the
# field is read as having this value, so old runs evaluate and resume as they trained.
LEGACY_VALUES = {
    "model": {"normalize_item_embedding": False, "decoder_inputs": "sum",
              "decoder_identity_init": False, "encoder": "scratch", "pretrained": "",
              "encoder_spec": "", "history_code_gradient": True,
              "separate_item_encoder": False, "dense_gradient": "autodiff",
              "attention_gradient": "autodiff"},
    "optim": {"freeze_encoder_layers": 0, "frozen": (), "decoder_lr": 0.0},
    "data": {"history_repr": "text"},
    "train": {"history_refresh_every": 100, "init_from_kmeans": False,
              "cache_frozen_encoder": False, "encoder_cache_dtype": "float32"},
    "loss": {"div_probs": "gumbel", "div_temperature": 0.0},
    "eval": {"validation_diagnostics": True, "ranking": "beam", "cosine_weight": 10.0,
             "exclude_history": False, "candidate_level": 0, "sid_rerank_depth": 0,
             "candidate_budget": 0, "popularity_weight": 0.0},
    "benchmark": {"popularity_weight_grid": (), "exclude_history_grid": ()},
}


def config_from_json(obj) -> ml_collections.ConfigDict:
  """The locked ConfigDict of a checkpoint's config JSON (lists become tuples), with
  the fields it predates set to their `LEGACY_VALUES`."""
  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    return tuple(tuples(v) for v in x) if isinstance(x, list) else x
  obj = tuples(obj)
  for section, fields in LEGACY_VALUES.items():
    if isinstance(obj.get(section), dict):
      obj[section] = {**fields, **obj[section]}
  config = ml_collections.ConfigDict(obj)
  config.lock()
  return config


def _checked_config(workdir, obj) -> ml_collections.ConfigDict:
  """`config_from_json(obj)`, refused when it lacks a section the commands read."""
  config = config_from_json(obj)
  missing = [s for s in REQUIRED_SECTIONS if s not in config]
  if missing:
    raise WorkdirError(f"{workdir}: the checkpoint's config lacks the section(s) "
                       f"{', '.join(missing)}; it was written by an incompatible version")
  return config


def read_config(workdir, step: Optional[int] = None) -> ml_collections.ConfigDict:
  """The config saved with a checkpoint (the latest by default)."""
  checkpointer = _open(workdir)
  try:
    obj = checkpointer.restore_json("config", step)
  finally:
    checkpointer.close()
  return _checked_config(workdir, obj)


def newest_config(workdir) -> Tuple[int, ml_collections.ConfigDict]:
  """(step, config) of the newest checkpoint whose config and tokenizer read."""
  checkpointer = _open(workdir)
  try:
    return _newest_config(workdir, checkpointer)
  finally:
    checkpointer.close()


def _newest_config(workdir, checkpointer: checkpointing.Checkpointer
                   ) -> Tuple[int, ml_collections.ConfigDict]:
  found = checkpointer.newest_json_items()
  if found is None:
    raise WorkdirError(f"no checkpoint in {checkpointing.checkpoint_dir(workdir)} is "
                       f"readable (steps {sorted(checkpointer.all_steps())}: their config "
                       "or tokenizer files are damaged)")
  return found[0], _checked_config(workdir, found[1]["config"])


def saved_config(workdir) -> Optional[ml_collections.ConfigDict]:
  """The config of the work directory's newest readable checkpoint; None if it has none."""
  try:
    return newest_config(workdir)[1]
  except WorkdirError:
    return None


def _candidates(workdir, checkpointer: checkpointing.Checkpointer) -> List[Tuple[int, str]]:
  """(step, label) in the order to try: the best checkpoint if validation ran, else the
  latest; then the others newest first, labelled 'fallback'."""
  _, config = _newest_config(workdir, checkpointer)
  steps = sorted(checkpointer.all_steps(), reverse=True)
  # None when no checkpoint carries validation metrics.
  best = (checkpointer.best_step_by(config.train.best_metric)
          if config.train.eval_every > 0 else None)
  first = (best, "best") if best is not None else (steps[0], "latest")
  return [first] + [(step, "fallback") for step in steps if step != first[0]]


def _restore_params(checkpointer: checkpointing.Checkpointer, model: DGIModel, config,
                    step: int):
  """The params of `step` on this process's first device, checked against the model."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shapes = jax.eval_shape(lambda: run_setup.init_params(model, config,
                                                        jax.random.PRNGKey(0)))
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          shapes)
  try:
    return checkpointer.restore_params(abstract, step)
  except checkpointing.CheckpointError as e:
    raise WorkdirError(f"checkpoint {step} does not fit the model its config describes: "
                       f"{e}") from None


def _read(what: str, fn: Callable[[], Any]) -> Any:
  """`fn()`, its failures turned into `_Unreadable` (a `UserError` passes as it is)."""
  try:
    return fn()
  except errors.UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    reason = errors.one_line(f"{type(e).__name__}: {e}")[:_REASON_CHARS]
    raise _Unreadable(f"{what}: {reason}") from e


def _warn_if_dataset_changed(workdir, step: int, record, run_data: run_setup.RunData) -> None:
  """Evaluating on edited dataset files is allowed, but not without saying so."""
  where = checkpointing.checkpoint_dir(workdir)
  if resume_checks.check_dataset(record, run_data.dataset.version, step, where,
                                 allow_change=True):
    warnings.warn(f"the dataset files changed since checkpoint step {step} was trained "
                  f"(trained on {record['dataset']}, now {run_data.dataset.version}); "
                  "using the files as they are now")


def load_trained(workdir, step: Optional[int] = None) -> TrainedRun:
  """Config, model, params and run data of a trained work directory, read through one
  open of its checkpoints.

  Args:
    workdir: The run's work directory.
    step: Which checkpoint; default the best (else the latest) readable one: a damaged
      checkpoint is skipped with a warning, in `_candidates`' order.

  Raises:
    WorkdirError: no directory, no checkpoint, none readable (or `step` unreadable), an
      incompatible config, or a dataset that can no longer be opened.
  """
  checkpointer = _open(workdir)
  try:
    candidates = ([(step, "requested")] if step is not None
                  else _candidates(workdir, checkpointer))
    reasons = []
    for candidate, selected in candidates:
      try:
        return _load_step(workdir, checkpointer, candidate)._replace(selected=selected)
      except _Unreadable as e:
        reasons.append(f"step {candidate}: {e}")
        if step is None:
          warnings.warn(f"checkpoint step {candidate} in "
                        f"{checkpointing.checkpoint_dir(workdir)} is unreadable ({e}); "
                        "trying the previous one")
  finally:
    checkpointer.close()
  raise WorkdirError(f"no readable checkpoint in {checkpointing.checkpoint_dir(workdir)}: "
                     + "; ".join(reasons))


def _load_step(workdir, checkpointer: checkpointing.Checkpointer, step: int) -> TrainedRun:
  """`load_trained` of one checkpoint; raises `_Unreadable` when a file of it is damaged."""
  items = _read("config or tokenizer", lambda: checkpointer.read_json_items(step))
  config = _checked_config(workdir, items["config"])
  tokenizer_json = items["tokenizer"]
  try:
    model = run_setup.build_model(config)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise WorkdirError(f"{workdir}: the checkpoint's config does not describe a model "
                       f"this version can build: {e}") from None
  params = _read("state", lambda: _restore_params(checkpointer, model, config, step))
  # The params were trained with the checkpoint's tokenizer: use it, whatever the data
  # directory or the pre-trained encoder's directory holds now.
  tokenizer = tokenizer_lib.tokenizer_from_json(tokenizer_json)
  try:
    run_data = run_setup.prepare_run_data(config, workdir, tokenizer=tokenizer)
  except (FileNotFoundError, jsonl_format.DatasetFormatError) as e:
    raise WorkdirError(f"{workdir}: cannot open the run's dataset: {e}") from None
  _warn_if_dataset_changed(workdir, step, items["run"], run_data)
  return TrainedRun(config, model, params, run_data, step)
