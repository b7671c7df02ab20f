"""The metrics log of a run, and where its wall time went.

`<workdir>/metrics.jsonl` holds one JSON object per line: training writes it
(`MetricsWriter`) and reports its training time from it (`train_seconds`); plots and
tests read it (`read_metrics`).

`<workdir>/train_timing.json` holds the wall-time breakdown of the latest `dgi train`
session that ran steps (`PhaseTimer`, `write_timing`, `read_timing`, `format_timing`):
data preparation, initialisation, k-means, compilation, steps, validation, checkpoints.
It is a file of its own because every reader of metrics.jsonl expects one line per
logged step and kind.
"""

import contextlib
import json
import pathlib
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional

import jax
import numpy as np

from dgi_jax import atomic_write, paths

METRICS_FILE = "metrics.jsonl"
TIMING_FILE = "train_timing.json"


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


# ---------------------------------------------------------------------------- timing

# The phases of a training session, in the order they happen (`PhaseTimer.breakdown`).
#   data             dataset build or load, tokenizer, catalogue tokenisation, iterator.
#   init             model and optimizer set-up, parameter init or checkpoint restore,
#                    pre-trained weights, history table, the disk-space check.
#   kmeans           k-means initialisation of the codebooks (item embedding included).
#   encoder_cache    encoding the catalogue and training requests once, when the encoder
#                    is frozen (encoder_cache.py).
#   compile          the first step's wall time minus a typical (median) later step:
#                    tracing and XLA compilation of the train step.
#   steps            the other train-step time (dispatch to the metrics' arrival).
#   input            reading, tokenising and placing the next batch.
#   history_refresh  recomputing the history table (history_repr codes / embedding).
#   validation       `evaluate_fn` passes (indexing and search, their compilation too).
#   checkpoint       saves, and the wait for the last asynchronous save to finish.
# `other` is the rest of `total` (config checks, the run lock, logging, progress bar).
PHASES = ("data", "init", "kmeans", "encoder_cache", "compile", "steps", "input",
          "history_refresh", "validation", "checkpoint")


class PhaseTimer:
  """Wall seconds (time.perf_counter) per phase of one training session.

  `with timer.phase(name):` adds the block's time to `name`; a phase entered inside
  another pauses the outer one, so phases never count the same second twice and add up
  to at most the session's total.
  """

  def __init__(self):
    self._start = time.perf_counter()
    self.seconds = dict.fromkeys(PHASES, 0.0)
    self.step_seconds: List[float] = []  # Every train step's own wall time, in order.
    self._stack: List[str] = []
    self._since = self._start

  def _credit(self) -> None:
    """Adds the time since the last switch to the running (innermost) phase."""
    now = time.perf_counter()
    if self._stack:
      self.seconds[self._stack[-1]] += now - self._since
    self._since = now

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    if name not in self.seconds:
      raise ValueError(f"unknown phase {name!r}; expected one of {PHASES}")
    self._credit()
    self._stack.append(name)
    try:
      yield
    finally:
      self._credit()
      self._stack.pop()

  @contextlib.contextmanager
  def step(self) -> Iterator[None]:
    """One train step: its time goes to `steps` and into `step_seconds`."""
    start = time.perf_counter()
    with self.phase("steps"):
      yield
    self.step_seconds.append(time.perf_counter() - start)

  def breakdown(self) -> Dict[str, Any]:
    """{"steps_run", "seconds": {phase: s, ..., "other": s, "total": s}}.

    Compilation is the first step's time above a typical step (the median of the
    others), and `steps` the rest of the step time (every step at its typical cost);
    with a single step that step is all counted as compilation.
    """
    self._credit()
    seconds = dict(self.seconds)
    if self.step_seconds:
      typical = float(np.median(self.step_seconds[1:])) if len(self.step_seconds) > 1 else 0.0
      seconds["compile"] = max(0.0, self.step_seconds[0] - typical)
      seconds["steps"] = max(0.0, seconds["steps"] - seconds["compile"])
    total = time.perf_counter() - self._start
    seconds["other"] = max(0.0, total - sum(seconds.values()))
    seconds["total"] = total
    return {"steps_run": len(self.step_seconds), "seconds": seconds}


def write_timing(workdir, timing: Dict[str, Any]) -> None:
  """Writes `timing` to `<workdir>/train_timing.json` (process 0; replaces the file)."""
  if jax.process_index() != 0:
    return
  path = paths.as_path(workdir) / TIMING_FILE
  text = json.dumps(timing, indent=2) + "\n"
  if paths.is_uri(path):
    path.write_text(text)  # An object upload is atomic by itself.
  else:
    atomic_write.write_text(path, text)


def read_timing(workdir) -> Optional[Dict[str, Any]]:
  """The latest session's `train_timing.json`; None when there is none."""
  path = paths.as_path(workdir) / TIMING_FILE
  return json.loads(path.read_text()) if path.exists() else None


_LABELS = {"kmeans": "k-means", "encoder_cache": "encoder cache",
           "history_refresh": "history refresh",
           "checkpoint": "checkpoints"}


def format_timing(timing: Dict[str, Any]) -> str:
  """A few lines for the terminal: the total and each phase that took time, with its
  share."""
  seconds, steps = timing["seconds"], timing["steps_run"]
  total = seconds["total"]

  def part(name):
    label = _LABELS.get(name, name)
    share = 100 * seconds[name] / total if total > 0 else 0.0
    text = f"{label} {seconds[name]:.1f} s ({share:.0f}%"
    if name == "steps" and steps:
      text += f", {1e3 * seconds[name] / steps:.0f} ms/step"
    return text + ")"

  shown = [name for name in PHASES + ("other",) if seconds[name] >= 0.05 or name == "steps"]
  half = (len(shown) + 1) // 2
  return "\n".join([f"wall time {total:.1f} s, {steps} steps (written to {TIMING_FILE}):",
                     "  " + ", ".join(part(n) for n in shown[:half]),
                     "  " + ", ".join(part(n) for n in shown[half:])])
