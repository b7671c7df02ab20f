"""The layout follows the flow data -> train -> checkpoint -> serve -> evaluate."""

import subprocess
import sys

from dgi_jax import config_files
from conftest import REPO_ROOT

# Serving (index + search over a trained run) and evaluation need the model, its params
# and the run's data, never the training loop.
SERVING_AND_EVALUATION = ("dgi_jax.trained_run", "dgi_jax.retrieval", "dgi_jax.evaluate",
                          "dgi_jax.diagnostics", "dgi_jax.baselines.dense", "dgi_jax.plots")


def test_serving_and_evaluation_do_not_import_the_training_loop():
  imports = "; ".join(f"import {module}" for module in SERVING_AND_EVALUATION)
  check = f"import sys; {imports}; print('dgi_jax.train' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT, check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == "False"


def test_configs_load_by_name_from_any_directory(tmp_path, monkeypatch):
  # `dgi benchmark` finds configs/benchmark_<dataset>.py wherever it runs.
  monkeypatch.chdir(tmp_path)
  assert config_files.path("benchmark_beauty").is_file()
  beauty, base = config_files.load("benchmark_beauty"), config_files.load("benchmark")
  assert "benchmark" in beauty and beauty.model.d_model == base.model.d_model
