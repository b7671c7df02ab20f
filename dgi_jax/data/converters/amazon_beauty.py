"""Amazon Beauty (P5 / TIGER split with titles) -> the generic JSONL format.

Raw files (see ../shared/data/amazon_beauty/PROVENANCE.md):
  items.tsv             header line, then item_id <TAB> title <TAB> category paths
                        (' > ' between levels, '|' between paths; may be empty)
  sequential_data.txt   user_id item_id item_id ...   (one user a line, time order)

Item text: the title, then (`with_categories`) the distinct leaf names of its category
paths in file order, joined by ' | ', e.g.
"Glow in the Dark Neon Nail Polish (6 Pack) | Nail Polish".

Leave-one-out, as TIGER and P5 evaluate this split. For a user with items s_0 .. s_{n-1}:
  test        target s_{n-1}, history s_0 .. s_{n-2}   (the most recent `max_history`)
  validation  target s_{n-2}, history s_0 .. s_{n-3}   (idem)
  train       target s_t for every 1 <= t <= n-3, history the items before t (idem)
Position t = 0 is not a training target: with an empty history and an empty query the
request carries no signal, so every such line would teach only item popularity.
Histories are oldest first, queries are '' (pure next-item recommendation), and every
user needs at least 3 items. `max_valid_users` keeps only every k-th user's validation
request (k = ceil(users / max_valid_users), users in file order), because validating over
all 22k users during training is slow; the test split always keeps every user.

Output is deterministic: the catalogue is ordered by integer item id, the requests by
user (file order) and then by position.
"""

import math
import pathlib
import re

from dgi_jax.data import jsonl_format, records

ITEMS_FILE = "items.tsv"
SEQUENCES_FILE = "sequential_data.txt"
_HEADER = ["item_id", "title", "categories"]
_INTEGER = re.compile(r"[0-9]+")


def _error(path, message, line=None, field=None) -> jsonl_format.DatasetFormatError:
  return jsonl_format.DatasetFormatError(path, message, line, field)


def _lines(path: pathlib.Path):
  """(line number, text without the newline) of a UTF-8 text file."""
  if not path.is_file():
    raise _error(path, "missing file")
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      try:
        yield line_no, raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        raise _error(path, f"not UTF-8 ({e.reason})", line_no) from None


def item_text(title: str, categories: str, with_categories: bool = True) -> str:
  """Title plus the distinct category leaves: "T | leaf1 | leaf2"."""
  if not with_categories:
    return title
  leaves = []
  for category_path in categories.split("|"):
    leaf = category_path.split(">")[-1].strip()
    if leaf and leaf not in leaves:
      leaves.append(leaf)
  return " | ".join([title, *leaves])


def read_items(path: pathlib.Path, with_categories: bool = True) -> dict[str, records.Item]:
  """Item id -> Item of items.tsv, in file order."""
  items: dict[str, records.Item] = {}
  first_line: dict[str, int] = {}
  for line_no, line in _lines(path):
    fields = line.split("\t")
    if line_no == 1:
      if fields[:2] != _HEADER[:2] or len(fields) > 3:
        raise _error(path, f"expected the header {'<TAB>'.join(_HEADER)}, got {line!r}", 1)
      continue
    if not line.strip():
      continue
    if not 2 <= len(fields) <= 3:
      raise _error(path, f"expected item_id<TAB>title<TAB>categories, got {len(fields)} "
                   "tab-separated fields", line_no)
    item_id, title = fields[0].strip(), fields[1].strip()
    if not _INTEGER.fullmatch(item_id):
      raise _error(path, f"not a non-negative integer: {item_id!r}", line_no, "item_id")
    if item_id in items:
      raise _error(path, f"duplicate item id {item_id} (first on line "
                   f"{first_line[item_id]})", line_no, "item_id")
    if not title:
      raise _error(path, "empty title", line_no, "title")
    categories = fields[2] if len(fields) == 3 else ""
    items[item_id] = records.Item(item_id, item_text(title, categories, with_categories))
    first_line[item_id] = line_no
  if not items:
    raise _error(path, "file holds no items")
  return items


def read_sequences(path: pathlib.Path, items: dict[str, records.Item]) -> list[list[str]]:
  """Each user's item ids in time order (users in file order), validated."""
  sequences = []
  first_line: dict[str, int] = {}
  for line_no, line in _lines(path):
    fields = line.split()
    if not fields:
      continue
    user_id, sequence = fields[0], fields[1:]
    if not _INTEGER.fullmatch(user_id):
      raise _error(path, f"not a non-negative integer: {user_id!r}", line_no, "user_id")
    if user_id in first_line:
      raise _error(path, f"duplicate user {user_id} (first on line {first_line[user_id]})",
                   line_no, "user_id")
    first_line[user_id] = line_no
    for position, item_id in enumerate(sequence, start=1):
      if not _INTEGER.fullmatch(item_id):
        raise _error(path, f"not a non-negative integer: {item_id!r} (item {position})",
                     line_no, "item_id")
      if item_id not in items:
        raise _error(path, f"item {item_id} (item {position}) is not in {ITEMS_FILE}",
                     line_no, "item_id")
    if len(sequence) < 3:
      raise _error(path, f"user {user_id} has {len(sequence)} items; leave-one-out needs "
                   "at least 3", line_no, "item_id")
    sequences.append(sequence)
  if not sequences:
    raise _error(path, "file holds no users")
  return sequences


def leave_one_out(sequences: list[list[str]], max_history: int = 20,
                  max_valid_users: int = 0) -> dict[str, list[records.Request]]:
  """Train / validation / test requests of user sequences (see the module docstring)."""
  if max_history < 1:
    raise ValueError(f"max_history must be >= 1, got {max_history}")
  if max_valid_users < 0:
    raise ValueError(f"max_valid_users must be >= 0 (0 = all), got {max_valid_users}")

  def request(sequence, t):
    return records.Request("", tuple(sequence[max(0, t - max_history):t]), (sequence[t],))

  stride = math.ceil(len(sequences) / max_valid_users) if max_valid_users else 1
  splits = {split: [] for split in records.REQUEST_SPLITS}
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
    source_dir: Folder with items.tsv and sequential_data.txt.
    out_dir: Destination; `write_jsonl_dataset` writes a temporary sibling folder and
      renames it, so a failed conversion leaves nothing behind.
    max_history: Most recent items kept in a request's history (TIGER: 20).
    max_valid_users: Keep every k-th user's validation request so that at most this many
      remain (0 = every user). The test split always keeps every user.
    with_categories: Append the distinct category leaves to each title.
    overwrite: Replace an existing `out_dir`.

  Returns:
    `out_dir` as a path.

  Raises:
    DatasetFormatError: naming the file, line and field of the first bad input.
    FileExistsError: `out_dir` exists and `overwrite` is False.
  """
  source_dir, out_dir = pathlib.Path(source_dir), pathlib.Path(out_dir)
  if out_dir.exists() and not overwrite:  # Fail before the work (the writer checks too).
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
  items = read_items(source_dir / ITEMS_FILE, with_categories)
  sequences = read_sequences(source_dir / SEQUENCES_FILE, items)
  splits = leave_one_out(sequences, max_history, max_valid_users)
  catalogue = sorted(items.values(), key=lambda item: int(item.item_id))
  return jsonl_format.write_jsonl_dataset(out_dir, catalogue, splits, overwrite=overwrite)
