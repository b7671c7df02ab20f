"""Amazon Beauty (P5 / TIGER split with titles) -> the generic JSONL format.

Raw files (see ../shared/data/amazon_beauty/PROVENANCE.md):
  items.tsv             item_id <TAB> title <TAB> category paths (' > ' joined, '|' between)
  sequential_data.txt   user_id item_id item_id ...   (one user a line, time order)

Leave-one-out, as TIGER and P5 evaluate this split: per user the last item is the test
target (history: every earlier item, the most recent `max_history`), the second-last the
validation target, and each earlier position t >= 1 a training target with the items
before it as history. Position 0 is not a training target: with an empty history and no
query the request carries no signal. Queries are empty (pure next-item recommendation).
"""

import pathlib
from typing import Dict, List

from dgi_jax.data import jsonl_format, records

ITEMS_FILE = "items.tsv"
SEQUENCES_FILE = "sequential_data.txt"


def _item_text(title: str, categories: str, with_categories: bool) -> str:
  if not with_categories:
    return title
  leaves: List[str] = []
  for path in categories.split("|"):
    leaf = path.split(" > ")[-1].strip()
    if leaf and leaf not in leaves:
      leaves.append(leaf)
  return " | ".join([title] + leaves)


def read_items(path: pathlib.Path, with_categories: bool) -> Dict[str, records.Item]:
  """Item id -> Item of items.tsv (header line first)."""
  if not path.is_file():
    raise jsonl_format.DatasetFormatError(path, "missing file")
  items: Dict[str, records.Item] = {}
  with open(path, encoding="utf-8") as f:
    header = f.readline().rstrip("\n").split("\t")
    if header[:2] != ["item_id", "title"]:
      raise jsonl_format.DatasetFormatError(path, f"unexpected header {header}", 1)
    for line_no, line in enumerate(f, start=2):
      if not line.strip():
        continue
      fields = line.rstrip("\n").split("\t")
      if len(fields) < 2:
        raise jsonl_format.DatasetFormatError(path, "expected item_id<TAB>title"
                                              "[<TAB>categories]", line_no)
      item_id, title = fields[0].strip(), fields[1].strip()
      if not item_id.isdigit():
        raise jsonl_format.DatasetFormatError(path, f"not an integer: {item_id!r}",
                                              line_no, "item_id")
      if not title:
        raise jsonl_format.DatasetFormatError(path, "empty", line_no, "title")
      if item_id in items:
        raise jsonl_format.DatasetFormatError(path, f"duplicate item {item_id}", line_no,
                                              "item_id")
      categories = fields[2] if len(fields) > 2 else ""
      items[item_id] = records.Item(item_id, _item_text(title, categories, with_categories))
  if not items:
    raise jsonl_format.DatasetFormatError(path, "file holds no items")
  return items


def read_sequences(path: pathlib.Path, items: Dict[str, records.Item]) -> List[List[str]]:
  """Each user's item ids in time order; every id must be in the catalogue."""
  if not path.is_file():
    raise jsonl_format.DatasetFormatError(path, "missing file")
  sequences = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      for position, item_id in enumerate(fields[1:], start=1):
        if not item_id.isdigit():
          raise jsonl_format.DatasetFormatError(
              path, f"not an integer: {item_id!r} (position {position})", line_no, "item_id")
        if item_id not in items:
          raise jsonl_format.DatasetFormatError(
              path, f"item {item_id} is not in {ITEMS_FILE}", line_no, "item_id")
      if len(fields) < 4:
        raise jsonl_format.DatasetFormatError(
            path, f"user {fields[0]} has {len(fields) - 1} items; leave-one-out needs >= 3",
            line_no, "item_id")
      sequences.append(fields[1:])
  if not sequences:
    raise jsonl_format.DatasetFormatError(path, "file holds no users")
  return sequences


def leave_one_out(sequences: List[List[str]], max_history: int = 20,
                  max_valid_users: int = 0) -> Dict[str, List[records.Request]]:
  """Train / validation / test requests of user sequences (see the module doc).

  `max_valid_users` > 0 keeps every k-th user's validation request (k chosen so that at
  most that many remain) to make validation during training cheap; test keeps all users.
  """
  def request(sequence, t):
    return records.Request("", tuple(sequence[max(0, t - max_history):t]), (sequence[t],))

  stride = 1
  if max_valid_users > 0:
    stride = max(1, -(-len(sequences) // max_valid_users))
  splits = {"train": [], "validation": [], "test": []}
  for user, sequence in enumerate(sequences):
    n = len(sequence)
    splits["train"].extend(request(sequence, t) for t in range(1, n - 2))
    if user % stride == 0:
      splits["validation"].append(request(sequence, n - 2))
    splits["test"].append(request(sequence, n - 1))
  return splits


def convert(source_dir, out_dir, *, max_history: int = 20, max_valid_users: int = 0,
            with_categories: bool = True, overwrite: bool = False) -> pathlib.Path:
  """Converts the raw Beauty files in `source_dir` into a JSONL dataset at `out_dir`.

  Args:
    source_dir: folder with items.tsv and sequential_data.txt.
    out_dir: destination (written to a temporary folder, then renamed).
    max_history: most recent items kept in a request's history (TIGER: 20).
    max_valid_users: cap on validation requests (0 = one per user).
    with_categories: append the distinct category leaves to each title.
    overwrite: replace an existing `out_dir`.
  Raises:
    DatasetFormatError: naming the file, line and field of the first bad input.
  """
  source_dir = pathlib.Path(source_dir)
  items = read_items(source_dir / ITEMS_FILE, with_categories)
  sequences = read_sequences(source_dir / SEQUENCES_FILE, items)
  catalogue = sorted(items.values(), key=lambda item: int(item.item_id))
  return jsonl_format.write_jsonl_dataset(
      out_dir, catalogue, leave_one_out(sequences, max_history, max_valid_users),
      overwrite=overwrite)
