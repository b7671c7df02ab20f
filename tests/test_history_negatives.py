"""The request's newest history items as InfoNCE negatives (`loss.history_negatives` = k)
in training: which items, their tokens through the item path, the frozen encoder's caches
(whole and bottom) reading the same negatives as the uncached step, and the config check.
The loss itself is checked by hand in test_losses.py."""

import jax
import numpy as np
import pytest

from dgi_jax import checkpointing, config_checks, errors, train
from dgi_jax import train_step as train_step_lib
from dgi_jax.models import pretrained
from run_fixtures import tiny_config


def test_newest_history_items_newest_first_and_padded():
  history = np.array([[4, 5, 6, -1, -1], [7, -1, -1, -1, -1], [-1] * 5, [1, 2, 3, 8, 9]])
  np.testing.assert_array_equal(train_step_lib.newest_history(history, 3),
                                [[6, 5, 4], [7, -1, -1], [-1, -1, -1], [9, 8, 3]])


def test_the_batch_carries_the_negatives_tokens():
  catalogue = np.arange(40, dtype=np.int32).reshape(10, 4)
  batch = {"history": np.array([[3, 1, -1], [2, -1, -1]])}
  batch = train_step_lib.add_history_negatives(batch, 2, catalogue)
  np.testing.assert_array_equal(batch[train_step_lib.NEGATIVE_INDEX], [[1, 3], [2, -1]])
  np.testing.assert_array_equal(batch[train_step_lib.NEGATIVE_TOKENS],
                                catalogue[[[1, 3], [2, 0]]])


def _params(workdir):
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  params = checkpointer.read_params()
  checkpointer.close()
  return params


def _config(tfds_dir, negatives, **train_fields):
  config = tiny_config(tfds_dir, num_steps=6, checkpoint_every=6, **train_fields)
  with config.unlocked():
    config.loss.history_negatives = negatives
  return config


def _assert_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5), a, b)


def test_negatives_change_the_training(tmp_path):
  train.train_and_evaluate(_config(tmp_path / "tfds", 3), tmp_path / "on")
  train.train_and_evaluate(_config(tmp_path / "tfds", 0), tmp_path / "off")
  differs = jax.tree.map(lambda a, b: bool(np.any(a != b)), _params(tmp_path / "on"),
                         _params(tmp_path / "off"))
  assert any(jax.tree.leaves(differs))


@pytest.mark.parametrize("parallelism", ["jit", "pmap"])
def test_a_cached_constant_encoder_reads_the_same_negatives(tmp_path, parallelism):
  """The whole encoder frozen: the cached run (negatives' embeddings from the cache) ends
  where the uncached run (negatives through the encoder) ends."""
  def config(cache):
    c = _config(tmp_path / "tfds", 3, cache_frozen_encoder=cache, parallelism=parallelism,
                encoder_cache_dtype="float32")
    with c.unlocked():
      c.optim.frozen = ("encoder",)
    return c
  train.train_and_evaluate(config(True), tmp_path / "cached")
  train.train_and_evaluate(config(False), tmp_path / "uncached")
  _assert_close(_params(tmp_path / "cached"), _params(tmp_path / "uncached"))


def test_the_cached_bottom_reads_the_same_negatives(tmp_path):
  """all-MiniLM-L6-v2 with 4 of 6 layers frozen: the negatives run the top layers from the
  cached bottom, and the run ends where the uncached one ends."""
  def config(cache):
    c = _config(tmp_path / "tfds", 2, cache_frozen_encoder=cache,
                encoder_cache_dtype="float32")
    with c.unlocked():
      c.model.encoder = "bert"
      c.model.pretrained = pretrained.bundled_minilm_dir()
      c.optim.freeze_encoder_layers = 4
      c.optim.backbone_lr = 1e-4  # The top layers visibly move.
    return c
  train.train_and_evaluate(config(True), tmp_path / "cached")
  train.train_and_evaluate(config(False), tmp_path / "uncached")
  _assert_close(_params(tmp_path / "cached"), _params(tmp_path / "uncached"))


@pytest.mark.parametrize("negatives", [-1, 21])
def test_more_negatives_than_the_history_holds_are_refused(negatives):
  config = tiny_config("unused")
  with config.unlocked():
    config.data.max_history = 20
    config.loss.history_negatives = negatives
  with pytest.raises(errors.ConfigError, match="loss.history_negatives"):
    config_checks.check_values(config)
