"""Saved configs read back from checkpoints: the upgrade of configs that predate a field."""

from dgi_jax import trained_run
from dgi_jax.models.config import ModelConfig
from conftest import load_config


def _saved(config, drop=()):
  obj = config.to_dict()
  for section, field in drop:
    del obj[section][field]
  return obj


def test_fields_a_saved_config_predates_get_the_behaviour_it_was_trained_with():
  # The benchmark config: it holds every section LEGACY_VALUES names.
  config = load_config("benchmark", "scratch")
  dropped = [(s, f) for s, fields in trained_run.LEGACY_VALUES.items() for f in fields]
  read = trained_run.config_from_json(_saved(config, dropped))
  for section, field in dropped:
    assert read[section][field] == trained_run.LEGACY_VALUES[section][field]
  model = ModelConfig.from_config(read)
  assert (model.decoder_inputs, model.normalize_item_embedding,
          model.separate_item_encoder) == ("sum", False, False)


def test_saved_fields_are_kept():
  config = load_config("tiny")
  read = trained_run.config_from_json(_saved(config))
  assert read.to_dict() == config.to_dict()
  assert isinstance(read.model.codebook_sizes, tuple)
