"""`dgi benchmark` under the accelerator config on a T5 checkpoint: a small random T5
encoder with its own SentencePiece model, written as a Hugging Face directory, through
the zero-shot and DGI rows. No package ships T5 weights, so the checkpoint is built here;
the full-size configs are checked in test_benchmark_configs.py."""

import pathlib

import numpy as np
import pytest

from dgi_jax import trained_run
from dgi_jax.benchmark import finished_runs, runner
from dgi_jax.data import jsonl_format, synthetic_catalogue
from dgi_jax.models import pretrained
from conftest import load_config

transformers = pytest.importorskip("transformers")
sentencepiece = pytest.importorskip("sentencepiece")
torch = pytest.importorskip("torch")

METHODS = "zero_shot,dgi"


def _write_t5(directory: pathlib.Path, texts) -> pathlib.Path:
  """A T5 v1.1 encoder at toy size and a SentencePiece model trained on `texts`, with
  T5's special ids (pad 0, eos 1, unk 2)."""
  directory.mkdir(parents=True)
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=str(directory / "spiece"),
      vocab_size=200, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
      minloglevel=2)
  vocab = sentencepiece.SentencePieceProcessor(
      model_file=str(directory / "spiece.model")).get_piece_size()
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=48,
                                 num_layers=2, num_heads=4, dropout_rate=0.0,
                                 feed_forward_proj="gated-gelu")
  transformers.T5EncoderModel(config).save_pretrained(directory)
  return directory


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  root = tmp_path_factory.mktemp("benchmark_t5")
  raw = synthetic_catalogue.make_synthetic_dataset(200, 600, 60, seed=5)
  data = jsonl_format.write_jsonl_dataset(root / "jsonl", raw.items, raw.splits)
  t5_dir = _write_t5(root / "t5", [item.text for item in raw.items])
  config = load_config("benchmark_beauty_accelerator")
  with config.unlocked():
    config.model.pretrained = str(t5_dir)
    # The accelerator's schedule, shrunk to a CPU test; everything else as configured.
    config.train.num_steps = 8
    config.train.eval_every = 4
    config.train.checkpoint_every = 4
    config.optim.warmup_steps = 2
    config.train.global_batch_size = 16
    config.data.max_query_len = 48
    config.eval.batch_size = 32
  config.lock()
  workdir = root / "work"
  runner.run_benchmark(str(data), METHODS, config, workdir, log=lambda _: None)
  return dict(workdir=workdir, t5_dir=t5_dir, config=config)


def test_every_row_runs_on_the_t5_checkpoint(bench):
  for name in METHODS.split(","):
    result = finished_runs.read_result(bench["workdir"], name)
    assert result is not None, name
    assert result["config"]["model.encoder"] == "t5"
    assert result["config"]["model.dtype"] == "bfloat16"
    assert 0.0 <= result["report"]["metrics"]["hit@10"] <= 1.0
  dgi = finished_runs.read_result(bench["workdir"], "dgi")
  assert dgi["report"]["checkpoint"]["step"] in (4, 8)  # The better of two validations.


def test_the_trained_run_reads_the_checkpoints_tokenizer_and_weights(bench):
  run = trained_run.load_trained(bench["workdir"] / "dgi" / "main")
  assert run.model.cfg.encoder == "t5" and run.model.cfg.d_model == 32
  spm = sentencepiece.SentencePieceProcessor(
      model_file=str(bench["t5_dir"] / "spiece.model"))
  assert run.run_data.tokenizer.vocab_size == spm.get_piece_size()
  text = "lavender face cream"
  items = run.run_data.tokenizer.encode_items([text], max_len=64)[0]
  assert items[items > 0].tolist() == spm.encode(text) + [1]  # T5's `text </s>`.
  # Refined from the checkpoint's weights: eight Adam steps at 5e-5 move no weight by
  # more than about 4e-4; a random initialisation would be O(1) away.
  original = pretrained.load_params(bench["t5_dir"], pretrained.read_spec(bench["t5_dir"]))
  table = np.asarray(run.params["encoder"]["embeddings"]["embedding"])
  assert np.abs(table - np.asarray(original["embeddings"]["embedding"])).max() < 2e-3
