"""Write-then-rename, so a reader never sees a half-written file."""

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[str]:
  """Yields a temporary file beside `path` (its parent is created) to write to.

  When the block ends normally the file is renamed onto `path` (atomic on one file
  system); when it raises, the temporary file is removed and `path` is left untouched.
  `suffix` keeps an extension for writers that infer the format from the name.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def atomic_directory(path) -> Iterator[pathlib.Path]:
  """Yields a temporary folder beside `path` (its parent is created) to fill.

  When the block ends normally the folder takes `path`'s place: renamed onto it, or, if
  `path` exists, swapped with it and the old one removed. When it raises, the temporary
  folder is removed and `path` is left untouched. The folder is made 0755 rather than
  mkdtemp's private 0700, so that it reads as a folder made with mkdir would.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  tmp.chmod(0o755)
  try:
    yield tmp
    if path.exists():
      old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
      os.replace(path, old / "data")
      os.replace(tmp, path)
      shutil.rmtree(old)
    else:
      os.replace(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def write_text(path, text: str) -> pathlib.Path:
  """Writes `text` (UTF-8) to `path` atomically."""
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  return pathlib.Path(path)
