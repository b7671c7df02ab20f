"""PNG figures of a run: Hit@10 per popularity bucket, training curves, gradient-norm trace.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot state, no display) and
written atomically, so a reader never sees half a PNG.
"""

import math
import pathlib
from typing import Any, Dict, List, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dgi_jax import atomic_write
from dgi_jax import metrics_log

LOSS_TERMS = ("total", "ntp", "global", "local", "infonce", "div")
GRAD_NORM_KEY = "item_encoder_last_layer_grad_norm"


def save_png(figure: Figure, path) -> pathlib.Path:
  """Renders `figure` to `path` via a temporary file and a rename."""
  FigureCanvasAgg(figure)
  with atomic_write.atomic_path(path, suffix=".png") as tmp:
    figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
  return pathlib.Path(path)


def _number(x) -> float:
  return float("nan") if x is None else float(x)


def plot_popularity_buckets(long_tail: Dict[str, Any], path, title: str = "") -> pathlib.Path:
  """Bar chart of Hit@10 per popularity bucket (like the paper's Figure 4), unseen last.

  Args:
    long_tail: the 'long_tail' entry of an `evaluate.evaluate_split` report.
    path: PNG file to write.
    title: figure title.
  """
  labels, values, colours = [], [], []
  for b in long_tail["buckets"]:
    span = ("empty" if b["popularity_min"] is None
            else f"f={b['popularity_min']}..{b['popularity_max']}")
    labels.append(f"B{b['bucket']}\n{span}\nn={b['count']}")
    values.append(_number(b["hit@10"]))
    colours.append("tab:blue")
  unseen = long_tail["unseen"]
  labels.append(f"unseen\nf=0\nn={unseen['count']}")
  values.append(_number(unseen["hit@10"]))
  colours.append("tab:orange")
  figure = Figure(figsize=(7, 4))
  ax = figure.add_subplot()
  bars = ax.bar(range(len(values)), [0.0 if math.isnan(v) else v for v in values],
                color=colours)
  for bar, value in zip(bars, values):
    ax.annotate("n/a" if math.isnan(value) else f"{value:.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom", fontsize=8)
  ax.set_xticks(range(len(values)), labels, fontsize=8)
  # Real-data hit rates can be a few percent: scale to the data, not to 1.
  finite = [v for v in values if not math.isnan(v)]
  ax.set_ylim(0, min(1.05, max(0.05, 1.25 * max(finite, default=0.0))))
  ax.set_ylabel(f"Hit@{long_tail['k']}")
  ax.set_title(title or "Hit@10 by item popularity (B0 head .. B4 tail)")
  return save_png(figure, path)


def _series(records: Sequence[Dict[str, Any]], key: str, kind: str = "train"):
  rows = [(r["step"], r[key]) for r in records if r["kind"] == kind and key in r]
  return [s for s, _ in rows], [v for _, v in rows]


def plot_training_curves(records: Sequence[Dict[str, Any]], path) -> pathlib.Path:
  """Loss terms against step (one panel each), and validation Hit@10 if logged."""
  terms = [t for t in LOSS_TERMS if _series(records, t)[0]]
  valid_steps, valid_hits = _series(records, "hit@10", kind="valid")
  panels = len(terms) + (1 if valid_steps else 0)
  if not panels:
    raise ValueError("no training metrics to plot")
  cols = min(panels, 3)
  rows = -(-panels // cols)
  figure = Figure(figsize=(4 * cols, 3 * rows))
  for i, term in enumerate(terms):
    ax = figure.add_subplot(rows, cols, i + 1)
    ax.plot(*_series(records, term))
    ax.set_title(f"loss: {term}")
    ax.set_xlabel("step")
  if valid_steps:
    ax = figure.add_subplot(rows, cols, panels)
    ax.plot(valid_steps, valid_hits, marker="o", color="tab:green")
    ax.set_title("validation hit@10")
    ax.set_xlabel("step")
  figure.tight_layout()
  return save_png(figure, path)


def plot_grad_norm(records: Sequence[Dict[str, Any]], path) -> pathlib.Path:
  """Gradient norm of the item encoder's last layer against step (smooth vs spiky)."""
  steps, values = _series(records, GRAD_NORM_KEY)
  if not steps:
    raise ValueError(f"no {GRAD_NORM_KEY} in the training metrics")
  figure = Figure(figsize=(7, 3.5))
  ax = figure.add_subplot()
  ax.plot(steps, values, color="tab:red")
  ax.set_xlabel("step")
  ax.set_ylabel("gradient norm")
  ax.set_title("item encoder, last layer: gradient norm (window mean per log line)")
  return save_png(figure, path)


def write_run_plots(report: Dict[str, Any], workdir, out_dir,
                    evaluation: Optional[str] = None) -> List[pathlib.Path]:
  """All figures of an evaluated run; training plots only if metrics.jsonl has them.
  The long-tail figure is named by `evaluation` (default: the report's split)."""
  out_dir = pathlib.Path(out_dir)
  name = evaluation or report["split"]
  paths = [plot_popularity_buckets(
      report["long_tail"], out_dir / f"popularity_buckets_{name}.png",
      f"Hit@10 by popularity, {report['split']} split, beam {report['beam_size']}")]
  records = metrics_log.read_metrics(workdir)
  if any(r["kind"] == "train" for r in records):
    paths.append(plot_training_curves(records, out_dir / "training_curves.png"))
    if _series(records, GRAD_NORM_KEY)[0]:
      paths.append(plot_grad_norm(records, out_dir / "grad_norm_item_encoder.png"))
  return paths
