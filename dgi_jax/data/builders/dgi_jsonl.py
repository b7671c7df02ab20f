"""TFDS builder of a dataset in the generic JSONL format (see `jsonl_format`)."""

import dataclasses
import os

import tensorflow_datasets as tfds

from dgi_jax.data import jsonl_format
from dgi_jax.data.builders import common

# Hex digits of the content hash kept in the config name.
_FINGERPRINT_CHARS = 16


@dataclasses.dataclass(eq=False)
class DgiJsonlConfig(tfds.core.BuilderConfig):
  """Where the JSONL files are; the config name carries a hash of their content."""
  path: str = ""


class DgiJsonl(common.QuietBuilderMixin, tfds.core.GeneratorBasedBuilder):
  """A user's retrieval dataset: items.jsonl, train.jsonl, valid.jsonl, test.jsonl."""

  # Bump when the conversion of the same files changes.
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=jsonl_format.__doc__, features=common.features(),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are local.
    c = self.builder_config
    if c is None or not c.path:
      raise ValueError("dgi_jsonl needs a DgiJsonlConfig naming the directory "
                       "(see make_config)")
    raw = jsonl_format.read_jsonl_dataset(c.path)
    self.info.metadata.update(common.metadata(raw))
    return common.split_generators(raw)

  def _generate_examples(self, examples):
    # `_split_generators` already made the generators; TFDS still requires this hook.
    yield from examples


def make_config(path: os.PathLike | str) -> DgiJsonlConfig:
  """Returns the config of the directory `path`, named after its files' content.

  Editing any file changes the name, so a prepared copy of old content is never
  reused. Raises `DatasetFormatError` if a file is missing.
  """
  digest = jsonl_format.fingerprint(path)[:_FINGERPRINT_CHARS]
  return DgiJsonlConfig(name=f"content_{digest}", path=os.fspath(path),
                        description=f"JSONL dataset read from {os.fspath(path)}")
