"""DGI on a pre-trained all-MiniLM-L6-v2 encoder: loading into the model, frozen layers,
a short run that saves, resumes and evaluates without the original directory, and the
zero-shot encoder's tokens and vectors on SciFact against the PyTorch reference."""

import json
import shutil

import jax
import numpy as np
import pytest

from dgi_jax import checkpointing, evaluate, run_setup, train, trained_run
from dgi_jax.models import encoders, pretrained
from conftest import SHARED_DATA, load_config

try:
  MINILM_DIR = pretrained.bundled_minilm_dir()
except pretrained.PretrainedError:
  MINILM_DIR = None
pytestmark = pytest.mark.skipif(MINILM_DIR is None,
                                reason="all-MiniLM-L6-v2 package not installed")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def minilm_copy(tmp_path_factory):
  """A copy of the checkpoint directory that a test may delete."""
  return str(shutil.copytree(MINILM_DIR, tmp_path_factory.mktemp("minilm") / "model"))


def _config(tfds_dir, pretrained_dir, freeze_layers=4):
  config = load_config("tiny")
  with config.unlocked():
    config.data.tfds_dir = tfds_dir
    config.model.encoder = "bert"
    config.model.pretrained = pretrained_dir
    config.optim.freeze_encoder_layers = freeze_layers
    config.optim.backbone_lr = 1e-4  # Large enough that trained leaves visibly move.
    config.train.num_steps = 20
    config.train.checkpoint_every = 10
  return config


def _params(workdir):
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  params, step = checkpointer.read_params(), checkpointer.latest_step()
  checkpointer.close()
  return params, step


def test_resolve_takes_width_and_vocabulary_from_the_checkpoint(tfds_dir):
  config = encoders.resolve_pretrained(_config(tfds_dir, MINILM_DIR))
  assert config.model.d_model == 384 and config.data.vocab_size == 30522
  spec = json.loads(config.model.encoder_spec)
  assert spec["kind"] == "bert" and spec["num_layers"] == 6
  model = run_setup.build_model(config)
  params = run_setup.init_params(model, config, jax.random.PRNGKey(0))
  assert params["codebook_0"].shape == (8, 384)
  loaded = encoders.load_pretrained_params(params, model.cfg, MINILM_DIR)
  reference = pretrained.load_params(MINILM_DIR, model.cfg.encoder_spec)
  for a, b in zip(jax.tree.leaves(loaded["encoder"]), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)
  # Everything but the encoder keeps its initialisation.
  np.testing.assert_array_equal(loaded["codebook_0"], params["codebook_0"])


def test_encoder_kind_must_match_the_checkpoint(tfds_dir):
  config = _config(tfds_dir, MINILM_DIR)
  with config.unlocked():
    config.model.encoder = "t5"
  with pytest.raises(ValueError, match="'bert' checkpoint"):
    encoders.resolve_pretrained(config)
  with config.unlocked():
    config.model.encoder = "scratch"
  with pytest.raises(ValueError, match="model.encoder is 'scratch'"):
    encoders.resolve_pretrained(config)


def test_run_from_minilm_freezes_resumes_and_evaluates_without_the_directory(
    tfds_dir, minilm_copy, tmp_path):
  config = _config(tfds_dir, minilm_copy)
  with config.unlocked():
    # Uncached steps: three short runs would each build the bottom cache over every
    # training request; tests/test_encoder_cache.py covers the cached path and its resume.
    config.train.cache_frozen_encoder = False
  train.train_and_evaluate(config, tmp_path / "straight")
  train.train_and_evaluate(config, tmp_path / "resumed", stop_at_step=10)
  train.train_and_evaluate(config, tmp_path / "resumed")
  straight, step_a = _params(tmp_path / "straight")
  resumed, step_b = _params(tmp_path / "resumed")
  assert step_a == step_b == 20
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)

  # Embeddings and layers 0-3 are the pre-trained weights; layers 4-5 were trained.
  spec = pretrained.read_spec(minilm_copy)
  original = pretrained.load_params(minilm_copy, spec)
  for name in ["embeddings"] + [f"layer_{i}" for i in range(6)]:
    same = all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(straight["encoder"][name]), jax.tree.leaves(original[name])))
    assert same == (name == "embeddings" or int(name[-1]) < 4), name

  # The checkpoint carries the architecture and the tokenizer: evaluation needs neither
  # the original directory nor a tokenizer file.
  shutil.rmtree(minilm_copy)
  run = trained_run.load_trained(tmp_path / "straight")
  assert run.model.cfg.encoder == "bert" and run.model.cfg.d_model == 384
  assert run.run_data.tokenizer.vocab_size == 30522
  report = evaluate.evaluate_workdir(tmp_path / "straight", split="test")[0]
  flat = evaluate.flat_metrics(report)
  assert flat["hit@10"] > 0.1, flat  # Untrained codes and 300 items: chance is ~.03.


def test_frozen_layers_get_no_gradient_and_no_update(tfds_dir):
  """One train step: frozen leaves unchanged and absent from the gradient norm."""
  from dgi_jax import optim, train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  config = encoders.resolve_pretrained(_config(tfds_dir, MINILM_DIR, freeze_layers=6))
  model = run_setup.build_model(config)
  params = run_setup.init_params(model, config, jax.random.PRNGKey(0))
  labels = optim.param_labels(params, config.optim)
  assert labels["encoder"]["layer_5"] and all(
      l == "frozen" for l in jax.tree.leaves(labels["encoder"]))
  assert labels["codebook_0"] == "quantizer"
  loss_and_grads = train_step_lib.make_loss_and_grads(model, config, 10)
  rs = np.random.RandomState(0)
  batch = dict(item_tokens=rs.randint(1000, 2000, (4, 16)).astype(np.int32),
               query_tokens=rs.randint(1000, 2000, (4, 32)).astype(np.int32),
               item_index=np.arange(4, dtype=np.int32),
               example_id=np.arange(4, dtype=np.int32))
  _, grads, _ = loss_and_grads(params, batch, jax.random.PRNGKey(1), 0)
  assert all(not np.any(g) for g in jax.tree.leaves(grads["encoder"]))
  assert np.any(grads["codebook_0"]) and np.any(grads["decoder"]["ln_final"]["scale"])


# Abstracts and claims whose embeddings are compared with the PyTorch reference: a fixed
# spread over the catalogue and the first claims of the test split.
_PARITY_ITEMS, _PARITY_CLAIMS = 48, 32


@pytest.mark.skipif(not (SHARED_DATA / "scifact").is_dir(), reason="SciFact not present")
def test_zero_shot_minilm_embeds_scifact_as_sentence_transformers_does(tmp_path):
  """Regression guard for the zero-shot row: on SciFact's own texts, our tokenizer lays
  out every abstract (cut at 256 tokens) and the claims as the checkpoint's Hugging Face
  tokenizer does, and our Flax MiniLM with masked-mean pooling embeds them as
  transformers' BertModel with mean pooling (sentence-transformers' all-MiniLM-L6-v2
  recipe) does. Same tokens and same vectors give sentence-transformers' ranking: nDCG@10
  .6451 on the test claims (shared/docs/PRETRAINED_ENCODERS.md; `dgi benchmark` measures
  the whole corpus, docs/DESIGN.md "SciFact on the frozen encoder")."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  from dgi_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from dgi_jax.data.converters import scifact  # pylint: disable=g-import-not-at-top
  from dgi_jax.models import quantizer  # pylint: disable=g-import-not-at-top
  from dgi_jax.parity import torch_model  # pylint: disable=g-import-not-at-top
  config = load_config("minilm")
  with config.unlocked():
    config.data.dataset = str(scifact.convert(SHARED_DATA / "scifact", tmp_path / "jsonl"))
    config.data.tfds_dir = str(tmp_path / "tfds")
    config.data.max_item_len = 256  # all-MiniLM-L6-v2's max_seq_length.
    config.data.max_query_len = 64
    config.data.max_history = 0
  config = encoders.resolve_pretrained(config)
  model = run_setup.build_model(config)
  params = encoders.load_pretrained_params(
      run_setup.init_params(model, config, jax.random.PRNGKey(0)), model.cfg, MINILM_DIR)
  run_data = run_setup.prepare_run_data(config, tmp_path / "work")
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM_DIR)

  def hf_tokens(texts, width):
    return np.asarray(hf_tokenizer(texts, truncation=True, max_length=width,
                                   padding="max_length")["input_ids"], np.int32)

  items = run_data.catalogue_tokens  # [5183, width <= 256]
  expected = hf_tokens(run_data.dataset.item_texts, 256)
  assert items.shape == (5183, 256)  # Some abstract fills all 256 positions.
  np.testing.assert_array_equal(items, expected)
  batch = next(pipeline.iterate_eval(run_data.dataset, run_data.tokenizer, config.data,
                                     "test", _PARITY_CLAIMS))
  claims = [r["query"].decode() for r in
            (run_data.dataset.source("test")[i] for i in range(_PARITY_CLAIMS))]
  queries = batch["query_tokens"]
  np.testing.assert_array_equal(queries, hf_tokens(claims, queries.shape[1]))

  reference = transformers.BertModel.from_pretrained(MINILM_DIR, add_pooling_layer=False)
  reference.eval()

  def reference_vectors(tokens):  # sentence-transformers: mean over the real tokens.
    ids = torch.as_tensor(np.asarray(tokens, np.int64))
    mask = (ids != hf_tokenizer.pad_token_id).long()
    with torch.no_grad():
      states = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    return torch_model.sentence_vectors(states, mask.to(states.dtype)).numpy()

  def our_vectors(pooled):  # As the index and the dense ranking normalise them.
    return np.asarray(quantizer.l2_normalize(jax.numpy.asarray(pooled)))

  sample = np.linspace(0, len(items) - 1, _PARITY_ITEMS).astype(int)
  ours = run_setup.embed_items(model, params, items[sample], _PARITY_ITEMS // 2)
  np.testing.assert_allclose(our_vectors(ours), reference_vectors(items[sample]),
                             atol=2e-5)
  assert batch["mask"].all()  # The test split has 300 claims.
  z_q = run_setup.encode_requests(model, params, jax.numpy.asarray(queries)).z_q
  np.testing.assert_allclose(our_vectors(z_q), reference_vectors(queries), atol=2e-5)
