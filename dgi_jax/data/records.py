"""In-memory records shared by the JSONL reader, the synthetic catalogue and the builders.

Every data source (a user's JSONL directory, the built-in catalogue, later converters)
produces a `RawDataset`, so one builder path turns any of them into TFDS splits.
"""

import dataclasses

# Request splits, in the order TFDS builds them; the catalogue is the `items` split.
ITEMS_SPLIT = "items"
REQUEST_SPLITS = ("train", "validation", "test")

# File of each split in the generic on-disk format.
ITEMS_FILE = "items.jsonl"
SPLIT_FILES = {"train": "train.jsonl", "validation": "valid.jsonl", "test": "test.jsonl"}


def recent_history(history, max_history: int):
  """The most recent `max_history` items of a history (oldest first), oldest first."""
  return history[max(len(history) - max_history, 0):] if max_history > 0 else history[:0]


@dataclasses.dataclass(frozen=True)
class Item:
  """One catalogue entry."""
  item_id: str
  text: str


@dataclasses.dataclass(frozen=True)
class Request:
  """One retrieval request.

  Attributes:
    query: Free text; '' for pure next-item recommendation.
    history: Item ids the user interacted with, oldest first.
    item_ids: Relevant item ids; exactly one for training requests.
  """
  query: str
  history: tuple[str, ...]
  item_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class RawDataset:
  """A catalogue plus its request splits (keys: `REQUEST_SPLITS`)."""
  items: list[Item]
  splits: dict[str, list[Request]]
