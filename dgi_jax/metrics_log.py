"""The metrics log of a run: one JSON object per line in `<workdir>/metrics.jsonl`.

Training writes it (`MetricsWriter`) and reports its training time from it
(`train_seconds`); plots and tests read it (`read_metrics`).
"""

import json
import pathlib
from typing import Any, Dict, Iterable, List, Optional

import jax

from dgi_jax import atomic_write, paths

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
  """Writes one JSON object per line to `<workdir>/metrics.jsonl` (process 0 only).

  A local file is appended to. Object stores cannot append: GCS objects are immutable, and
  gcsfs even accepts mode "a" and then overwrites (fsspec/gcsfs#533), which would keep only
  the last line. There the writer keeps the file's lines in memory (those of earlier runs
  are read once, at the start) and rewrites the whole object on every `write`. One file
  per run segment would avoid the rewrite, but every reader (plots, the benchmark's
  training time, tests) reads the one `metrics.jsonl`. No temporary object and rename:
  an object upload is atomic by itself (readers see the old or the new object), and a GCS
  rename is a copy plus a delete. Cost: one upload of the whole file per line, i.e. a
  few hundred KB every `train.log_every` steps for a long run.

  A resumed run first drops the lines after its checkpoint's step (`truncate_after`):
  the steps after the last checkpoint of a killed run are trained and logged again, and
  readers (plots, the benchmark's training time) expect one line per step and kind.
  """

  def __init__(self, workdir, append: Optional[bool] = None):
    """`append`: whether the file system can append; default: unless an object store."""
    self._path = paths.as_path(workdir) / METRICS_FILE
    self._enabled = jax.process_index() == 0
    self._append = not paths.is_uri(self._path) if append is None else append
    self._lines = None  # Every line of the file, when rewriting.
    if self._enabled and not self._append:
      self._lines = (self._path.read_text().splitlines(keepends=True)
                     if self._path.exists() else [])

  def write(self, step: int, metrics: Dict[str, Any], kind: str = "train") -> None:
    if not self._enabled:
      return
    record = {"step": int(step), "kind": kind}
    record.update({k: float(v) for k, v in metrics.items()})
    line = json.dumps(record) + "\n"
    if self._append:
      with self._path.open("a") as f:
        f.write(line)
    else:
      self._lines.append(line)
      self._path.write_text("".join(self._lines))

  def _current_lines(self) -> List[str]:
    if not self._append:
      return self._lines
    return self._path.read_text().splitlines(keepends=True) if self._path.exists() else []

  def records(self) -> List[Dict[str, Any]]:
    """Every record of the log, earlier sessions' included (empty on processes > 0)."""
    if not self._enabled:
      return []
    return [json.loads(line) for line in self._current_lines() if line.strip()]

  def truncate_after(self, step: int) -> None:
    """Drops the lines of steps after `step`, and a torn last line of a killed run."""
    if not self._enabled:
      return
    lines = self._current_lines()
    kept = [line for line in lines if _logged_step(line) <= step]
    if kept == lines:
      return
    if self._append:
      atomic_write.write_text(self._path, "".join(kept))
    else:
      self._lines = kept
      self._path.write_text("".join(kept))


def _logged_step(line: str) -> float:
  """The step of a metrics line; infinity for a line that does not parse (torn)."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return float("inf")


def read_metrics(workdir) -> List[Dict[str, Any]]:
  """The records of a local `<workdir>/metrics.jsonl` (empty if the file does not exist)."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.is_file():
    return []
  with path.open() as f:
    return [json.loads(line) for line in f if line.strip()]


def train_seconds(records: Iterable[Dict[str, Any]]) -> float:
  """Seconds spent in train steps: each train record's window of steps over its
  steps_per_sec, added up (across the sessions of a resumed run)."""
  seconds, previous = 0.0, 0
  for record in sorted((r for r in records if r["kind"] == "train"),
                       key=lambda r: r["step"]):
    seconds += (record["step"] - previous) / record["steps_per_sec"]
    previous = record["step"]
  return seconds
