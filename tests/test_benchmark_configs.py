"""The benchmark configs: the pre-trained MiniLM encoder by default, scratch one argument
away, the dataset configs on either."""

import subprocess
import sys

import pytest

from dgi_jax.models import pretrained
from conftest import REPO_ROOT, load_config


@pytest.mark.parametrize("name", ["benchmark", "benchmark_beauty", "benchmark_scifact"])
def test_minilm_by_default_scratch_by_argument(name):
  default, minilm, scratch = (load_config(name), load_config(name, "minilm"),
                              load_config(name, "scratch"))
  assert default.to_dict() == minilm.to_dict()
  assert minilm.model.encoder == "bert"
  assert minilm.model.pretrained == pretrained.bundled_minilm_dir()
  # k-means over the pre-trained item embeddings at step 0, as the paper does; from
  # scratch part of the budget first trains the encoder alone.
  assert minilm.benchmark.encoder_warmup_fraction == 0.0
  assert scratch.model.encoder == "scratch" and not scratch.model.pretrained
  assert scratch.benchmark.encoder_warmup_fraction > 0
  # The dataset's own fields hold on both encoders.
  for field in ("max_item_len", "max_query_len", "max_history"):
    assert minilm.data[field] == scratch.data[field], field
  with pytest.raises(ValueError, match="one of"):
    load_config(name, "t5")


def test_the_accelerator_budget_stays_on_its_scratch_model():
  config = load_config("benchmark_beauty_accelerator")
  assert config.model.encoder == "scratch" and config.model.d_model == 256


def test_dgi_benchmark_reads_the_config_argument(tmp_path):
  # --config FILE:ARG passes ARG to get_config (ml_collections); an unknown encoder is one
  # line and exit status 1, before anything is written.
  cmd = [sys.executable, "-m", "dgi_jax.main", "benchmark", "--dataset", "nowhere",
         "--workdir", str(tmp_path / "w"),
         "--config", f"{REPO_ROOT}/configs/benchmark_beauty.py:t5"]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
  assert proc.returncode == 1, proc.stderr
  message = proc.stderr.strip().splitlines()
  assert len(message) == 1 and "Traceback" not in message[0], message
  assert message[0].endswith("ValueError: configs/benchmark.py:t5: the encoder is one of "
                             "('minilm', 'scratch')"), message
  assert not (tmp_path / "w").exists()
