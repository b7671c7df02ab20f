"""The generic on-disk dataset format: read, validate and write JSONL directories.

A dataset directory holds four UTF-8 JSON-lines files:

  items.jsonl   {"item_id": str, "text": str}                  one line per item
  train.jsonl   {"query": str, "history": [item_id, ...], "item_id": str}
  valid.jsonl   like train.jsonl; instead of "item_id" a line may carry
  test.jsonl    "item_ids": [item_id, ...] when several items are relevant

`history` lists item ids oldest first and may be empty; `query` may be '' (pure
next-item recommendation). Unknown fields are ignored, so logs can keep extra columns.
Blank lines are skipped, and so is a UTF-8 byte-order mark at the start of a file (some
editors write one). Every problem raises `DatasetFormatError` naming the file, the
line and the field, because a silent skip would change the benchmark without notice.
"""

import hashlib
import json
import os
import pathlib
from typing import Any, Iterator, Mapping, Sequence

from dgi_jax import atomic_write, errors
from dgi_jax.data import records

# JSON type names for error messages: users write JSON, not Python.
_JSON_TYPE_NAMES = {str: "string", int: "number", float: "number", bool: "boolean",
                    list: "array", dict: "object", type(None): "null"}


class DatasetFormatError(errors.UserError, ValueError):
  """A dataset file is missing, empty or holds an invalid line."""

  def __init__(self, path: os.PathLike | str, message: str, line: int | None = None,
               field: str | None = None):
    self.path = str(path)
    self.line = line
    self.field = field
    where = self.path if line is None else f"{self.path}:{line}"
    what = f" field '{field}':" if field else ""
    super().__init__(f"{where}:{what} {message}")


def _json_type(value: Any) -> str:
  return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _iter_objects(path: pathlib.Path) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields (line number, JSON object) for each non-blank line; raises if none."""
  if not path.is_file():
    raise DatasetFormatError(path, "missing file")
  count = 0
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      try:
        text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
      except UnicodeDecodeError as e:
        raise DatasetFormatError(path, f"not UTF-8 ({e.reason})", line_no) from None
      if not text.strip():
        continue
      try:
        # Without its line break: an unfinished object is then reported at the end of
        # its own line, not at 'line 2 column 1' of the text.
        obj = json.loads(text.rstrip("\r\n"))
      except json.JSONDecodeError as e:
        raise DatasetFormatError(path, f"malformed JSON ({e.msg} at column {e.colno})",
                                 line_no) from None
      if not isinstance(obj, dict):
        raise DatasetFormatError(path, f"expected a JSON object, got {_json_type(obj)}",
                                 line_no)
      count += 1
      yield line_no, obj
  if count == 0:
    raise DatasetFormatError(path, "file holds no records")


def _get_str(obj: Mapping[str, Any], field: str, path, line: int, *,
             allow_empty: bool) -> str:
  if field not in obj:
    raise DatasetFormatError(path, "missing field", line, field)
  value = obj[field]
  if not isinstance(value, str):
    raise DatasetFormatError(path, f"expected a string, got {_json_type(value)}", line,
                             field)
  if not allow_empty and not value.strip():
    raise DatasetFormatError(path, "empty string", line, field)
  return value


def _get_ids(obj: Mapping[str, Any], field: str, path, line: int,
             known_ids: Mapping[str, Any]) -> tuple[str, ...]:
  """Reads a list of item ids that must all be in the catalogue."""
  if field not in obj:
    raise DatasetFormatError(path, "missing field", line, field)
  value = obj[field]
  if not isinstance(value, list):
    raise DatasetFormatError(path, f"expected an array of item ids, got "
                             f"{_json_type(value)}", line, field)
  for i, item_id in enumerate(value):
    if not isinstance(item_id, str):
      raise DatasetFormatError(path, f"element {i} should be an item id string, got "
                               f"{_json_type(item_id)}", line, field)
    if item_id not in known_ids:
      raise DatasetFormatError(path, f"unknown item id {item_id!r} (not in "
                               f"{records.ITEMS_FILE})", line, field)
  return tuple(value)


def parse_item(obj: Mapping[str, Any], path, line: int) -> records.Item:
  """Validates one items.jsonl object (types only; duplicates are the caller's)."""
  return records.Item(item_id=_get_str(obj, "item_id", path, line, allow_empty=False),
                      text=_get_str(obj, "text", path, line, allow_empty=False))


def parse_request(obj: Mapping[str, Any], split: str, path, line: int,
                  known_ids: Mapping[str, Any]) -> records.Request:
  """Validates one request object of `split` against the catalogue ids."""
  query = _get_str(obj, "query", path, line, allow_empty=True)
  history = _get_ids(obj, "history", path, line, known_ids)
  if split == "train":
    if "item_ids" in obj:
      raise DatasetFormatError(path, "training lines carry exactly one 'item_id'", line,
                               "item_ids")
    target = _get_str(obj, "item_id", path, line, allow_empty=False)
    targets = _get_ids({"item_id": [target]}, "item_id", path, line, known_ids)
  elif "item_ids" in obj:
    if "item_id" in obj:
      raise DatasetFormatError(path, "give 'item_id' or 'item_ids', not both", line,
                               "item_ids")
    targets = _get_ids(obj, "item_ids", path, line, known_ids)
    if not targets:
      raise DatasetFormatError(path, "no relevant item", line, "item_ids")
    if len(set(targets)) != len(targets):
      raise DatasetFormatError(path, "repeated item id", line, "item_ids")
  else:
    target = _get_str(obj, "item_id", path, line, allow_empty=False)
    targets = _get_ids({"item_id": [target]}, "item_id", path, line, known_ids)
  return records.Request(query=query, history=history, item_ids=targets)


def read_items(path: pathlib.Path) -> list[records.Item]:
  """Items of an `items.jsonl` file; raises `DatasetFormatError` naming file, line, field."""
  items, first_line = [], {}
  for line, obj in _iter_objects(path):
    item = parse_item(obj, path, line)
    if item.item_id in first_line:
      raise DatasetFormatError(path, f"duplicate item id {item.item_id!r} (first on line "
                               f"{first_line[item.item_id]})", line, "item_id")
    first_line[item.item_id] = line
    items.append(item)
  return items


def read_jsonl_dataset(directory: os.PathLike | str) -> records.RawDataset:
  """Reads and validates a generic-format dataset directory.

  Args:
    directory: Folder holding items.jsonl, train.jsonl, valid.jsonl and test.jsonl.

  Returns:
    The catalogue (in file order: an item's index is its position) and the splits.

  Raises:
    DatasetFormatError: a file is missing or empty, or a line is invalid.
  """
  directory = pathlib.Path(directory)
  items = read_items(directory / records.ITEMS_FILE)
  known_ids = {item.item_id: None for item in items}
  splits = {}
  for split in records.REQUEST_SPLITS:
    path = directory / records.SPLIT_FILES[split]
    splits[split] = [parse_request(obj, split, path, line, known_ids)
                     for line, obj in _iter_objects(path)]
  return records.RawDataset(items=items, splits=splits)


def fingerprint(directory: os.PathLike | str) -> str:
  """Returns a SHA-256 hex digest of the dataset files, to name its prepared version."""
  directory = pathlib.Path(directory)
  digest = hashlib.sha256()
  for name in (records.ITEMS_FILE, *records.SPLIT_FILES.values()):
    path = directory / name
    if not path.is_file():
      raise DatasetFormatError(path, "missing file")
    digest.update(name.encode() + b"\0")
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    digest.update(b"\0")
  return digest.hexdigest()


def _request_to_json(request: records.Request, split: str) -> dict[str, Any]:
  obj = {"query": request.query, "history": list(request.history)}
  # A training request without exactly one target becomes an 'item_ids' line, which
  # the validation below rejects with the reader's message.
  if len(request.item_ids) == 1:
    obj["item_id"] = request.item_ids[0]
  else:
    obj["item_ids"] = list(request.item_ids)
  return obj


def write_jsonl_dataset(directory: os.PathLike | str, items: Sequence[records.Item],
                        splits: Mapping[str, Sequence[records.Request]], *,
                        overwrite: bool = False) -> pathlib.Path:
  """Writes a dataset in the generic format; converters end with this call.

  Records are validated with the reader's rules before anything becomes visible, and
  the files are written to a temporary sibling folder that is renamed into place, so a
  reader never sees a half-written dataset.

  Args:
    directory: Destination folder (created; must not exist unless `overwrite`).
    items: The catalogue, in index order.
    splits: Requests of 'train', 'validation' and 'test'.
    overwrite: Replace an existing `directory`.

  Returns:
    The destination path.

  Raises:
    DatasetFormatError: a record would not pass `read_jsonl_dataset`.
    FileExistsError: `directory` exists and `overwrite` is False.
  """
  directory = pathlib.Path(directory)
  if directory.exists() and not overwrite:
    raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it")
  missing = set(records.REQUEST_SPLITS) - set(splits)
  if missing:
    raise ValueError(f"splits lack {sorted(missing)}")
  lines = {records.ITEMS_FILE: []}
  first_line = {}
  for line, item in enumerate(items, start=1):
    obj = {"item_id": item.item_id, "text": item.text}
    parse_item(obj, records.ITEMS_FILE, line)
    if item.item_id in first_line:
      raise DatasetFormatError(records.ITEMS_FILE, f"duplicate item id {item.item_id!r} "
                               f"(first on line {first_line[item.item_id]})", line,
                               "item_id")
    first_line[item.item_id] = line
    lines[records.ITEMS_FILE].append(obj)
  if not items:
    raise DatasetFormatError(records.ITEMS_FILE, "file holds no records")
  for split in records.REQUEST_SPLITS:
    name = records.SPLIT_FILES[split]
    lines[name] = []
    for line, request in enumerate(splits[split], start=1):
      obj = _request_to_json(request, split)
      parse_request(obj, split, name, line, first_line)
      lines[name].append(obj)
    if not lines[name]:
      raise DatasetFormatError(name, "file holds no records")

  # An existing directory is only reachable here with overwrite=True.
  with atomic_write.atomic_directory(directory) as tmp:
    for name, objs in lines.items():
      with open(tmp / name, "w", encoding="utf-8") as f:
        for obj in objs:
          f.write(json.dumps(obj, ensure_ascii=False) + "\n")
  return directory
