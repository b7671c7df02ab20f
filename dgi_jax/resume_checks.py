"""Whether a run may resume from a checkpoint: the config and the data it was trained with.

Resuming under another model shape fails to restore, and under another loss, optimiser or
data layout it would silently continue a different run; both are refused with one line
naming the fields. Fields in `MAY_CHANGE` only schedule or place the run (how long, how
often to log, where files go) or choose how the same products are computed, and may
differ. The fields that name the dataset are not
compared: the dataset's version string (`Dataset.version`: builder, content hash or
synthetic parameters), saved in each checkpoint's run record, is. So a dataset that moved
resumes, and one whose files changed is refused unless the caller allows it.
"""

import json
from typing import Any, Dict, List, Optional, Tuple

from dgi_jax import errors

# Field paths, or section prefixes ending in '.', that may differ on resume.
MAY_CHANGE = ("train.num_steps", "train.log_every", "train.checkpoint_every",
              "train.eval_every", "train.best_metric", "train.distributed",
              "train.parallelism", "train.init_from", "train.init_from_kmeans",
              "train.kmeans_init", "train.kmeans_iters", "train.kmeans_items",
              "train.cache_frozen_encoder", "train.encoder_cache_dtype",
              "train.encoder_cache_dir",
              "data.tfds_dir", "data.worker_count", "model.pretrained",
              "model.dense_gradient", "model.attention_gradient", "eval.",
              "benchmark.")
# Fields that select the dataset: compared through the run record's dataset version.
DATASET_FIELDS = ("data.dataset", "data.synthetic_num_items", "data.synthetic_num_train",
                  "data.synthetic_num_eval", "data.seed")
_SHOWN_FIELDS = 6  # Differing fields a message lists before 'and N more'.


class ConfigMismatchError(errors.UserError):
  """The config differs from the checkpoint's in fields that must match."""


class DatasetChangedError(errors.UserError):
  """The dataset differs from the one the checkpoint was trained on."""


def run_record(dataset_version: str) -> Dict[str, Any]:
  """What a checkpoint records about its run besides the config: the dataset version."""
  return {"dataset": dataset_version}


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  """{'section.field': value} of a nested dict (a config's JSON)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _may_differ(path: str) -> bool:
  return path in DATASET_FIELDS or any(
      path == rule or (rule.endswith(".") and path.startswith(rule)) for rule in MAY_CHANGE)


def differing_fields(saved, config) -> List[Tuple[str, Any, Any]]:
  """(field, checkpoint value, new value) of the fields that must match but differ.

  Both are ConfigDicts; a field only one of them has (a config older or newer than this
  version) is not compared.
  """
  old = flatten(json.loads(saved.to_json()))
  new = flatten(json.loads(config.to_json()))
  return [(path, old[path], new[path]) for path in sorted(old.keys() & new.keys())
          if old[path] != new[path] and not _may_differ(path)]


def check_config(saved, config, step: int, where: str) -> None:
  """Raises ConfigMismatchError naming the fields where `config` differs from `saved`."""
  fields = differing_fields(saved, config)
  if not fields:
    return
  shown = ", ".join(f"{path} (checkpoint {old!r}, now {new!r})"
                    for path, old, new in fields[:_SHOWN_FIELDS])
  more = f" and {len(fields) - _SHOWN_FIELDS} more" if len(fields) > _SHOWN_FIELDS else ""
  raise ConfigMismatchError(
      f"the config differs from the one checkpoint step {step} in {where} was trained "
      f"with: {shown}{more}. Leave out --config (and these --config.* overrides) to "
      "resume with the work directory's config, or train in another --workdir")


def check_dataset(record: Optional[Dict[str, Any]], dataset_version: str, step: int,
                  where: str, allow_change: bool = False) -> bool:
  """Whether the dataset changed since `step`; raises DatasetChangedError if it did and
  `allow_change` is False. A checkpoint without a run record (older versions) passes."""
  trained_on = (record or {}).get("dataset")
  if trained_on is None or trained_on == dataset_version:
    return False
  if not allow_change:
    raise DatasetChangedError(
        f"checkpoint step {step} in {where} was trained on dataset {trained_on}, but "
        f"data.dataset now gives {dataset_version} (its files changed, or another dataset "
        "was named). Restore the files, train in another --workdir, or pass "
        "--allow_dataset_change to continue training on the new data")
  return True
