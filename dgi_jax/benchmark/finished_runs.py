"""Which benchmark runs are finished, where their results are kept, and whether they were
made under the present config.

A finished run's result (`runner.run_method`) is `<workdir>[/seed<k>]/<method>/result.json`,
and its copy in the results directory `runs/[seed<k>/]<method>.json`. Either makes the run
finished; the work directory's wins where both exist. Each result records the flattened
config its method ran under, which `config_changes` compares with the present one.
"""

import json
import pathlib
from typing import Any, Dict, List, Optional

import ml_collections

from dgi_jax import evaluate, resume_checks, trained_run
from dgi_jax.benchmark import methods as methods_lib

RESULT_FILE = "result.json"
RUNS_DIR = "runs"  # Under the results directory: each finished run's result.
# Config fields that do not change what a finished run computed: where its files are,
# how the work is laid out on the machine, and how many runs the benchmark makes. A
# finished run made under other values of these is kept.
NOT_COMPARED_FIELDS = frozenset({
    "data.dataset", "data.tfds_dir", "data.worker_count", "train.encoder_cache_dir",
    "train.distributed", "train.parallelism", "train.log_every", "eval.batch_size",
    "eval.item_batch_size", "benchmark.num_seeds", "benchmark.seeded_methods",
})


# The fields added since results were first recorded, at the values older runs had
# ({'section.field': value}, as `flat_config` gives them).
_LEGACY_FIELDS = resume_checks.flatten(json.loads(json.dumps(trained_run.LEGACY_VALUES)))


def seed_workdir(workdir, run: int) -> pathlib.Path:
  """Where run `run` of the trained methods lives: `workdir` itself for run 0 (the runs
  the tables report), <workdir>/seed<run> for the repeats."""
  workdir = pathlib.Path(workdir)
  return workdir / f"seed{run}" if run else workdir


def _read_json(path: pathlib.Path) -> Optional[Dict[str, Any]]:
  if not path.is_file():
    return None
  with path.open(encoding="utf-8") as f:
    return json.load(f)


def read_result(workdir, name: str) -> Optional[Dict[str, Any]]:
  """A finished method's result in a work directory (`seed_workdir` for run k), or None."""
  return _read_json(pathlib.Path(workdir) / name / RESULT_FILE)


def kept_result_path(results_dir, run: int, name: str) -> pathlib.Path:
  """Where the results directory keeps run `run` of method `name`."""
  return seed_workdir(pathlib.Path(results_dir) / RUNS_DIR, run) / f"{name}.json"


def finished_result(workdir, results_dir, run: int, name: str) -> Optional[Dict[str, Any]]:
  """Run `run` of method `name` if finished, from the work directory, else from the
  results directory's copy. The work directory's result wins: the copy is written when
  it is missing or differs, with only the config fields that are compared (a result
  written before results recorded only those holds the machine's paths). None if not
  finished."""
  result = read_result(seed_workdir(workdir, run), name)
  kept = kept_result_path(results_dir, run, name)
  if result is None:
    return _read_json(kept)
  if "config" in result:
    result = dict(result, config=compared_config(result["config"]))
  if _read_json(kept) != result:
    evaluate.write_report(result, kept)
  return result


def config_changes(result: Dict[str, Any], config: ml_collections.ConfigDict) -> List[str]:
  """'field: recorded -> now' for each field outside NOT_COMPARED_FIELDS in which `config`
  differs from the one `result` was made under. A field added since the result was made
  counts at the value older runs had (`trained_run.LEGACY_VALUES`, as when a checkpoint is
  read); any other field only one of them has (a config of an older or newer version) is
  not compared, as on resume (`resume_checks`), and results that predate the record have
  none."""
  if "config" not in result:
    return []
  recorded = compared_config({**_LEGACY_FIELDS, **result["config"]})
  now = compared_config(flat_config(config))
  return [f"{field}: {recorded[field]!r} -> {now[field]!r}"
          for field in sorted(recorded.keys() & now.keys()) if recorded[field] != now[field]]


def compared_config(flat: Dict[str, Any]) -> Dict[str, Any]:
  """The fields of a flat config that decide a result, what a result records (so that
  no machine's paths are kept with it). A pre-trained checkpoint counts
  by its last two folder names (a model's folder and its version, as in a Hugging Face
  snapshot), not by where a machine keeps it."""
  compared = {k: v for k, v in flat.items() if k not in NOT_COMPARED_FIELDS}
  if compared.get("model.pretrained"):
    compared["model.pretrained"] = "/".join(
        pathlib.PurePath(compared["model.pretrained"]).parts[-2:])
  return compared


def flat_config(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """`config` as {'section.field': value}, the values as JSON reads them back (a
  tuple is a list), so a recorded config compares equal to the one it came from."""
  return resume_checks.flatten(json.loads(config.to_json()))


def collect(workdir, results_dir, runs: Dict[str, int]):
  """{(method name, run): result} of every finished run among each method's first
  `runs[method name]` (`runner.runs_per_method`)."""
  finished = {}
  for method in methods_lib.METHODS:
    for run in range(runs[method.name]):
      result = finished_result(workdir, results_dir, run, method.name)
      if result is not None:
        finished[method.name, run] = result
  return finished
