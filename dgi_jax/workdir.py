"""Opening a trained run's work directory: config, tokenizer and params of a checkpoint.

`dgi eval`, `dgi search` and `dgi index` read everything from the work directory: the
config and the tokenizer saved with the checkpoint, the parameters of the best checkpoint
(by `train.best_metric`, when validation ran) or else the latest, and the run's dataset
(`train.prepare_run_data`, which reuses `<data.tfds_dir or workdir/tfds>`).
Every problem raises `WorkdirError` with a message meant for the command line.
"""

from typing import Any, NamedTuple, Optional, Tuple

import jax
import ml_collections

from dgi_jax import checkpointing, train
from dgi_jax.data import jsonl_format
from dgi_jax.data import pipeline
from dgi_jax.data import tokenizer as tokenizer_lib
from dgi_jax.models.dgi import DGIModel

# Sections the commands read; a config saved by an older version may lack one.
REQUIRED_SECTIONS = ("data", "model", "optim", "train", "eval")


class WorkdirError(RuntimeError):
  """A work directory is missing, holds no checkpoint, or one that does not fit."""


class TrainedRun(NamedTuple):
  config: ml_collections.ConfigDict
  model: DGIModel
  params: Any
  run_data: train.RunData


def _open(workdir) -> checkpointing.Checkpointer:
  workdir = checkpointing.as_path(workdir)  # Local or gs://.
  if not workdir.is_dir():
    raise WorkdirError(f"work directory {workdir} does not exist")
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
              "decoder_identity_init": False},
    "loss": {"div_probs": "gumbel", "div_temperature": 0.0},
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


def read_config(workdir, step: Optional[int] = None) -> ml_collections.ConfigDict:
  """The config saved with a checkpoint (the latest by default)."""
  checkpointer = _open(workdir)
  try:
    obj = checkpointer.restore_json("config", step)
  finally:
    checkpointer.close()
  config = config_from_json(obj)
  missing = [s for s in REQUIRED_SECTIONS if s not in config]
  if missing:
    raise WorkdirError(f"{workdir}: the checkpoint's config lacks the section(s) "
                       f"{', '.join(missing)}; it was written by an incompatible version")
  return config


def select_step(workdir) -> Tuple[int, str]:
  """(step, 'best' | 'latest'): the best checkpoint if validation ran, else the latest."""
  config = read_config(workdir)
  best_metric = config.train.best_metric if config.train.eval_every > 0 else None
  checkpointer = checkpointing.Checkpointer(workdir, best_metric=best_metric,
                                            read_only=True)
  try:
    latest = checkpointer.latest_step()
    best = checkpointer.best_step() if best_metric else None
  finally:
    checkpointer.close()
  # None when no checkpoint carries validation metrics.
  return (best, "best") if best is not None else (latest, "latest")


def _restore_params(workdir, model: DGIModel, config, step: int):
  """The params of `step` on this process's first device, checked against the model."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shapes = jax.eval_shape(lambda: train.init_params(model, config, jax.random.PRNGKey(0)))
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          shapes)
  try:
    return checkpointing.restore_params(workdir, abstract, step)
  except checkpointing.CheckpointError as e:
    raise WorkdirError(f"checkpoint {step} does not fit the model its config describes: "
                       f"{e}") from None


def load_trained(workdir, step: Optional[int] = None) -> TrainedRun:
  """Config, model, params and run data of a trained work directory.

  Args:
    workdir: The run's work directory.
    step: Which checkpoint; default `select_step(workdir)`.

  Raises:
    WorkdirError: no directory, no checkpoint, an incompatible config, or a dataset that
      can no longer be opened.
  """
  if step is None:
    step, _ = select_step(workdir)
  config = read_config(workdir, step)
  checkpointer = _open(workdir)
  try:
    tokenizer_json = checkpointer.restore_json("tokenizer", step)
  finally:
    checkpointer.close()
  try:
    model = train.build_model(config)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise WorkdirError(f"{workdir}: the checkpoint's config does not describe a model "
                       f"this version can build: {e}") from None
  params = _restore_params(workdir, model, config, step)
  try:
    run_data = train.prepare_run_data(config, workdir)
  except (FileNotFoundError, jsonl_format.DatasetFormatError) as e:
    raise WorkdirError(f"{workdir}: cannot open the run's dataset: {e}") from None
  # The params were trained with the checkpoint's tokenizer; prefer it to whatever file
  # the data directory holds now.
  tokenizer = tokenizer_lib.Tokenizer.from_json(tokenizer_json)
  if tokenizer.to_json() != run_data.tokenizer.to_json():
    run_data = train.RunData(run_data.dataset, tokenizer,
                             pipeline.encode_catalogue(run_data.dataset, tokenizer,
                                                       config.data))
  return TrainedRun(config, model, params, run_data)
