"""Features and example generation shared by the DGI builders.

TFDS gives a dataset one feature set for all splits, so the catalogue split (`items`)
and the request splits share the union of their fields; a row leaves the other kind's
fields at neutral values (-1, '' or []). Each row stores its own index, because TFDS
reorders examples when it writes them.
"""

from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dgi_jax.data import records

_NO_INDEX = -1


class QuietBuilderMixin:
  """No 'Downloading and preparing dataset Unknown size ... to <folder>' lines.

  TFDS prints them around a build for downloads; these builders read local files, and
  the folder they name is the scratch one that `dataset._build` renames afterwards.
  """

  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


def features() -> tfds.features.FeaturesDict:
  """Returns the features of every split."""
  return tfds.features.FeaturesDict({
      # Catalogue rows: position in the catalogue, id and text.
      "item_index": np.int32,
      "item_id": tfds.features.Text(),
      "text": tfds.features.Text(),
      # Request rows: index within the split, query, history (item indices, oldest
      # first) and relevant item indices (exactly one for training).
      "example_id": np.int32,
      "query": tfds.features.Text(),
      "history": tfds.features.Sequence(np.int32),
      "relevant": tfds.features.Sequence(np.int32),
  })


def _item_rows(items: list[records.Item]) -> Iterator[tuple[int, dict]]:
  for index, item in enumerate(items):
    yield index, {"item_index": index, "item_id": item.item_id, "text": item.text,
                  "example_id": _NO_INDEX, "query": "", "history": [], "relevant": []}


def _request_rows(requests: list[records.Request],
                  index_of: dict[str, int]) -> Iterator[tuple[int, dict]]:
  for example_id, request in enumerate(requests):
    yield example_id, {
        "item_index": _NO_INDEX, "item_id": "", "text": "",
        "example_id": example_id, "query": request.query,
        "history": [index_of[i] for i in request.history],
        "relevant": [index_of[i] for i in request.item_ids]}


def split_generators(raw: records.RawDataset) -> dict[str, Iterator[tuple[int, dict]]]:
  """Returns the example generator of each split of `raw`."""
  if len(raw.items) >= np.iinfo(np.int32).max:
    raise ValueError(f"{len(raw.items)} items do not fit int32 indices")
  index_of = {item.item_id: index for index, item in enumerate(raw.items)}
  generators = {records.ITEMS_SPLIT: _item_rows(raw.items)}
  for split in records.REQUEST_SPLITS:
    generators[split] = _request_rows(raw.splits[split], index_of)
  return generators


def metadata(raw: records.RawDataset) -> dict:
  """Returns dataset statistics stored with the prepared files.

  They spare readers a pass over the splits: `train_popularity[i]` counts the
  training requests whose target is item i, `max_relevant[split]` is the most
  relevant items of one request in the split.
  """
  index_of = {item.item_id: index for index, item in enumerate(raw.items)}
  popularity = np.zeros(len(raw.items), np.int64)
  for request in raw.splits["train"]:
    for item_id in request.item_ids:
      popularity[index_of[item_id]] += 1
  return {
      "train_popularity": popularity.tolist(),
      "max_relevant": {split: max(len(r.item_ids) for r in raw.splits[split])
                       for split in records.REQUEST_SPLITS},
  }
