"""The benchmark configs: the pre-trained MiniLM encoder by default, scratch one argument
away, the dataset configs on either; the accelerator configs on a T5 checkpoint."""

import json
import subprocess
import sys

import pytest

from dgi_jax import run_setup
from dgi_jax.models import encoders, pretrained
from conftest import REPO_ROOT, load_config
from model_fixtures import T5_LARGE


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
    load_config(name, "gpt2")


@pytest.mark.parametrize("name", ["benchmark_beauty_accelerator",
                                  "benchmark_scifact_accelerator"])
def test_accelerator_configs_run_the_papers_t5(name, tmp_path):
  config = load_config(name)
  assert config.model.encoder == "t5" and not config.model.pretrained  # The user's.
  with pytest.raises(ValueError, match="needs --config.model.pretrained"):
    encoders.resolve_pretrained(config)
  (tmp_path / "config.json").write_text(json.dumps(T5_LARGE))
  with config.unlocked():
    config.model.pretrained = str(tmp_path)
  config = encoders.resolve_pretrained(config)
  # The paper's optimisation on the whole encoder, in bfloat16 with float32 parameters.
  assert (config.optim.backbone_lr, config.optim.quantizer_lr) == (5e-5, 5e-4)
  assert config.optim.freeze_encoder_layers == 0 and config.model.dtype == "bfloat16"
  assert config.train.global_batch_size == 128
  assert config.benchmark.encoder_warmup_fraction == 0.0  # k-means at step 0.
  # Validation picks the reported checkpoint, within the schedule and after warm-up.
  assert 0 < config.train.eval_every < config.train.num_steps
  assert config.optim.warmup_steps < config.train.num_steps
  model = run_setup.build_model(config)
  assert (model.cfg.d_model, model.cfg.encoder_spec.num_layers) == (1024, 24)
  assert config.data.vocab_size == 32128


def test_the_accelerator_budgets_dataset_fields():
  beauty, scifact = (load_config("benchmark_beauty_accelerator"),
                     load_config("benchmark_scifact_accelerator"))
  assert beauty.data.max_query_len == 384 and beauty.data.max_history == 20  # All 20.
  assert beauty.train.num_steps == 15000  # The paper's.
  assert scifact.data.max_item_len == 256 > load_config("benchmark_scifact").data.max_item_len
  # The scratch model keeps its own wider budget on Beauty; SciFact cannot train one.
  scratch = load_config("benchmark_beauty_accelerator", "scratch")
  assert scratch.model.encoder == "scratch" and scratch.model.d_model == 256
  assert scratch.train.num_steps == 12000 and scratch.data.max_query_len == 384
  with pytest.raises(ValueError, match="cannot train an encoder from scratch"):
    load_config("benchmark_scifact_accelerator", "scratch")
  assert load_config("benchmark_scifact_accelerator", "minilm").model.encoder == "bert"


def test_pod_configs_build_on_the_t5_config():
  t5, pod = load_config("t5"), load_config("pod_t5large")
  for section in ("optim", "loss"):
    assert pod[section].to_dict() == t5[section].to_dict(), section
  assert (pod.model.encoder, pod.model.num_heads, pod.model.decoder_layers) == (
      t5.model.encoder, t5.model.num_heads, t5.model.decoder_layers)
  assert pod.loss.infonce_weight == 1.0  # The paper's, on a pre-trained encoder.


def _refused_benchmark(tmp_path, dataset: str, config: str) -> str:
  """The one stderr line of a `dgi benchmark` that must stop (exit status 1) before it
  writes anything."""
  cmd = [sys.executable, "-m", "dgi_jax.main", "benchmark", "--dataset", dataset,
         "--workdir", str(tmp_path / "w"), "--config", f"{REPO_ROOT}/configs/{config}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
  assert proc.returncode == 1, proc.stderr
  message = proc.stderr.strip().splitlines()
  assert len(message) == 1 and "Traceback" not in message[0], message
  assert not (tmp_path / "w").exists()
  return message[0]


def test_benchmark_without_the_t5_checkpoint_is_one_line_and_writes_nothing(tmp_path):
  message = _refused_benchmark(tmp_path, "beauty", "benchmark_beauty_accelerator.py")
  assert "needs --config.model.pretrained" in message, message


def test_dgi_benchmark_reads_the_config_argument(tmp_path):
  # --config FILE:ARG passes ARG to get_config (ml_collections); an unknown encoder is one
  # line and exit status 1, before anything is written.
  message = _refused_benchmark(tmp_path, "nowhere", "benchmark_beauty.py:gpt2")
  assert message.endswith("ValueError: configs/benchmark.py:gpt2: the encoder is one of "
                          "('minilm', 'scratch', 't5')"), message
