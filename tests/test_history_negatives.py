"""The request's own history items as InfoNCE negatives (`loss.history_negatives`) in
training: the item table in the train state and its checkpoint, exact resume, the table
read from a frozen encoder's cache, and the config checks. The loss itself is checked by
hand in test_losses.py."""

import jax
import numpy as np
import pytest

from dgi_jax import config_checks, errors, run_setup, train, trained_run
from dgi_jax.models import pretrained
from run_fixtures import saved_train_state, tiny_config


def _config(tfds_dir, history_negatives=True, **train_fields):
  fields = dict(num_steps=8, checkpoint_every=4, log_every=4, history_refresh_every=3)
  config = tiny_config(tfds_dir, **dict(fields, **train_fields))
  with config.unlocked():
    config.loss.history_negatives = history_negatives
  return config


def _table_and_params(workdir):
  state, step = saved_train_state(workdir)
  return state["history_table"], state["params"], step


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_the_checkpoint_holds_the_item_table_of_the_last_refresh(tfds_dir, tmp_path):
  """Text requests keep no table of their own; with the switch on the state holds every
  item's l2-normalised embedding. Stopped at step 6 the table is that of step 6's params
  (refreshed before the checkpoint); at step 8 it is still step 6's, not step 8's. The
  training differs from the run without the switch."""
  config = _config(tfds_dir)
  train.train_and_evaluate(config, tmp_path / "on", stop_at_step=6)
  trained = trained_run.load_trained(tmp_path / "on")
  table, _, step = _table_and_params(tmp_path / "on")
  assert step == 6
  expected = run_setup.history_table(trained.model, trained.params,
                                     trained.run_data.catalogue_tokens)
  assert table.shape == (trained.run_data.dataset.num_items, trained.model.cfg.d_model)
  np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(table, expected)
  train.train_and_evaluate(config, tmp_path / "on")
  later_table, params, step = _table_and_params(tmp_path / "on")
  assert step == 8
  np.testing.assert_array_equal(later_table, table)
  train.train_and_evaluate(_config(tfds_dir, history_negatives=False), tmp_path / "off")
  off, _ = saved_train_state(tmp_path / "off")
  assert off.get("history_table") is None
  differs = jax.tree.map(lambda a, b: bool(np.any(a != b)), params, off["params"])
  assert any(jax.tree.leaves(differs))


def test_an_interrupted_and_resumed_run_equals_an_uninterrupted_one_bitwise(tfds_dir,
                                                                             tmp_path):
  """Stopped at step 4, between the refreshes at 3 and 6: the checkpoint's table (of step
  3) carries the resumed run through steps 5 and 6 as the uninterrupted one."""
  config = _config(tfds_dir)
  train.train_and_evaluate(config, tmp_path / "straight")
  train.train_and_evaluate(config, tmp_path / "resumed", stop_at_step=4)
  train.train_and_evaluate(config, tmp_path / "resumed")
  straight, _ = saved_train_state(tmp_path / "straight")
  resumed, _ = saved_train_state(tmp_path / "resumed")
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_the_table_from_the_cached_bottom_is_the_encoders(tmp_path):
  """all-MiniLM-L6-v2 with 4 of 6 layers frozen and cached: the refreshed table comes
  through the top layers from the cached bottom, and the run ends where the uncached run,
  whose table comes through the whole encoder, ends."""
  def config(cache):
    c = _config(tmp_path / "tfds", num_steps=6, checkpoint_every=6,
                cache_frozen_encoder=cache, encoder_cache_dtype="float32")
    with c.unlocked():
      c.model.encoder = "bert"
      c.model.pretrained = pretrained.bundled_minilm_dir()
      c.optim.freeze_encoder_layers = 4
      c.optim.backbone_lr = 1e-4  # The top layers visibly move.
    return c
  train.train_and_evaluate(config(True), tmp_path / "cached")
  train.train_and_evaluate(config(False), tmp_path / "uncached")
  cached_table, cached_params, _ = _table_and_params(tmp_path / "cached")
  uncached_table, uncached_params, _ = _table_and_params(tmp_path / "uncached")
  np.testing.assert_allclose(cached_table, uncached_table, rtol=0, atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               cached_params, uncached_params)


@pytest.mark.parametrize("field, value, words", [
    ("data.history_repr", "codes", "holds their SIDs"),
    ("data.max_history", 0, "data.max_history=0"),
])
def test_configs_it_cannot_read_are_refused(field, value, words):
  config = tiny_config("unused")
  with config.unlocked():
    config.loss.history_negatives = True
    section, name = field.split(".")
    config[section][name] = value
  with pytest.raises(errors.ConfigError, match=words):
    config_checks.check_values(config)
