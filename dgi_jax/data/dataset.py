"""Entry point of the data package: prepare (or reuse) a TFDS dataset and open it.

    dataset = prepare_dataset(config.data, data_dir, build=jax.process_index() == 0)

`config.data.dataset` is 'synthetic' (the built-in catalogue) or a directory in the
generic JSONL format. Prepared files live under
`data_dir/<builder>/<config name>/<version>`; the config name encodes the synthetic
parameters or a hash of the JSONL files, so changed inputs never reuse stale files.
"""

import dataclasses
import os
import uuid
from typing import Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from dgi_jax import paths
from dgi_jax.data import records
from dgi_jax.data.builders import dgi_jsonl
from dgi_jax.data.builders import dgi_synthetic

SYNTHETIC = "synthetic"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A prepared dataset: the catalogue in memory, request splits as random access.

  Attributes:
    version: '<builder>/<config name>/<version>', unique per data content; use it to
      key anything derived from the data (tokenizers, indexes).
    item_ids: Item id of each item index.
    item_texts: Text of each item index.
    train_popularity: int64 [num_items], training requests targeting each item.
    builder: The TFDS builder, for its `info`.
  """
  version: str
  item_ids: list[str]
  item_texts: list[str]
  train_popularity: np.ndarray
  builder: tfds.core.DatasetBuilder
  _sources: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  def source(self, split: str):
    """Random-access source of 'train', 'validation' or 'test' (in TFDS file order).

    Records are dicts: example_id (int), query (UTF-8 bytes), history and relevant
    (sequences of item indices); the catalogue fields are left at -1 / b''.
    """
    _check_split(split)
    if split not in self._sources:  # Opening reads the file index; do it once.
      self._sources[split] = self.builder.as_data_source(split)
    return self._sources[split]

  def num_examples(self, split: str) -> int:
    """Number of requests in `split`."""
    _check_split(split)
    return self.builder.info.splits[split].num_examples

  def max_relevant(self, split: str) -> int:
    """The largest number of relevant items of one request of `split`."""
    _check_split(split)
    return int(self.builder.info.metadata["max_relevant"][split])

  def history_texts(self, history: Sequence[int]) -> list[str]:
    """Item texts of a history of item indices; negative (padding) entries are skipped."""
    return [self.item_texts[i] for i in history if i >= 0]


def _check_split(split: str) -> None:
  if split not in records.REQUEST_SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {records.REQUEST_SPLITS}")


def builder_and_config(data_config) -> tuple[type[tfds.core.GeneratorBasedBuilder],
                                              tfds.core.BuilderConfig]:
  """Returns the builder class and config that `data_config.dataset` selects."""
  if data_config.dataset == SYNTHETIC:
    return dgi_synthetic.DgiSynthetic, dgi_synthetic.make_config(
        num_items=data_config.synthetic_num_items,
        num_train=data_config.synthetic_num_train,
        num_eval=data_config.synthetic_num_eval, seed=data_config.seed)
  if not epath.Path(data_config.dataset).is_dir():
    raise FileNotFoundError(f"dataset {data_config.dataset!r} is neither "
                            f"{SYNTHETIC!r} nor a directory")
  return dgi_jsonl.DgiJsonl, dgi_jsonl.make_config(data_config.dataset)


def _build(builder_cls, config, data_dir: epath.Path, final: epath.Path) -> None:
  """Builds into a scratch data_dir and renames the finished version directory.

  On a failure TFDS removes its own incomplete folder but leaves the builder and
  config folders and a downloads folder behind; building elsewhere and renaming
  keeps `data_dir` free of half-made datasets.
  """
  scratch = data_dir / f".incomplete-{uuid.uuid4().hex}"
  scratch.mkdir(parents=True)
  try:
    builder = builder_cls(config=config, data_dir=os.fspath(scratch),
                          file_format="array_record")
    builder.download_and_prepare(download_dir=os.fspath(scratch / "downloads"))
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
      epath.Path(builder.data_dir).rename(final)
    except OSError:
      if not final.is_dir():  # Else another process finished the same build first.
        raise
  finally:
    try:
      scratch.rmtree()
    except OSError:
      pass


def prepare_dataset(data_config, data_dir: os.PathLike | str, *,
                    build: bool = True) -> Dataset:
  """Builds the dataset of `data_config` under `data_dir` if needed, then opens it.

  Args:
    data_config: The `config.data` ConfigDict.
    data_dir: TFDS data directory.
    build: Whether this process may build. With several processes sharing `data_dir`,
      let one build and make the others wait (e.g. a barrier) before they read.

  Returns:
    The opened dataset.

  Raises:
    DatasetFormatError: a JSONL file is invalid (nothing is left in `data_dir`).
    FileNotFoundError: the dataset is not prepared and `build` is False.
    ValueError: `data_dir` is on an object store (gs://...), which array_record cannot
      read (google/array_record#120).
  """
  if paths.is_uri(os.fspath(data_dir)):
    raise ValueError(f"TFDS data directory {os.fspath(data_dir)}: array_record reads local "
                     "files only; give a local (or mounted) data.tfds_dir")
  data_dir = epath.Path(data_dir)
  builder_cls, config = builder_and_config(data_config)
  version = f"{builder_cls.name}/{config.name}/{builder_cls.VERSION}"
  final = data_dir / version
  if not (final / "dataset_info.json").is_file():
    if not build:
      raise FileNotFoundError(f"{final} is not prepared; the building process "
                              "(build=True) must finish first")
    _build(builder_cls, config, data_dir, final)
  builder = builder_cls(config=config, data_dir=os.fspath(data_dir))
  items = builder.as_data_source(records.ITEMS_SPLIT)
  rows = items.__getitems__(range(len(items)))
  rows.sort(key=lambda row: row["item_index"])  # TFDS wrote them in its own order.
  if [row["item_index"] for row in rows] != list(range(len(rows))):
    raise ValueError(f"{final}: item indices are not 0..{len(rows) - 1}")
  popularity = np.asarray(builder.info.metadata["train_popularity"], np.int64)
  return Dataset(version=version,
                 item_ids=[row["item_id"].decode("utf-8") for row in rows],
                 item_texts=[row["text"].decode("utf-8") for row in rows],
                 train_popularity=popularity, builder=builder)
