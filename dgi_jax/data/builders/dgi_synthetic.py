"""TFDS builder of the built-in synthetic e-commerce dataset."""

import dataclasses

import tensorflow_datasets as tfds

from dgi_jax.data import synthetic_catalogue
from dgi_jax.data.builders import common


@dataclasses.dataclass(eq=False)
class DgiSyntheticConfig(tfds.core.BuilderConfig):
  """Sizes and seed of the catalogue; the config name must encode all of them."""
  num_items: int = 5000
  num_train: int = 40000
  num_eval: int = 2000
  seed: int = 0


def config_name(num_items: int, num_train: int, num_eval: int, seed: int) -> str:
  """Names a parameter set; the prepared files live under this name, so a change of
  any parameter selects other files instead of reusing stale ones."""
  return f"items{num_items}_train{num_train}_eval{num_eval}_seed{seed}"


class DgiSynthetic(common.QuietBuilderMixin, tfds.core.GeneratorBasedBuilder):
  """Synthetic e-commerce retrieval: product catalogue, queries and user histories."""

  # Bump when the generator's output changes for the same parameters.
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=synthetic_catalogue.__doc__, features=common.features(),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    if c is None:
      raise ValueError("dgi_synthetic needs a DgiSyntheticConfig (see make_config)")
    raw = synthetic_catalogue.make_synthetic_dataset(
        num_items=c.num_items, num_train=c.num_train, num_eval=c.num_eval, seed=c.seed)
    self.info.metadata.update(common.metadata(raw))
    return common.split_generators(raw)

  def _generate_examples(self, examples):
    # `_split_generators` already made the generators; TFDS still requires this hook.
    yield from examples


def make_config(num_items: int, num_train: int, num_eval: int,
                seed: int) -> DgiSyntheticConfig:
  """Returns the builder config of a parameter set."""
  return DgiSyntheticConfig(
      name=config_name(num_items, num_train, num_eval, seed), num_items=num_items,
      num_train=num_train, num_eval=num_eval, seed=seed)
