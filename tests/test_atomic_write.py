"""Write-then-rename: a failed write leaves the old file and no temporary file behind."""

import pytest

from dgi_jax import atomic_write


def test_write_text_replaces_and_creates_parents(tmp_path):
  path = tmp_path / "a" / "b" / "report.json"
  atomic_write.write_text(path, "one")
  atomic_write.write_text(path, "two")
  assert path.read_text() == "two"
  assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path):
  path = tmp_path / "results.md"
  path.write_text("old")
  with pytest.raises(RuntimeError, match="disk full"):
    with atomic_write.atomic_path(path, suffix=".md") as tmp:
      assert tmp.endswith(".md")
      with open(tmp, "w", encoding="utf-8") as f:
        f.write("half")
      raise RuntimeError("disk full")
  assert path.read_text() == "old"
  assert [p.name for p in tmp_path.iterdir()] == ["results.md"]


def test_atomic_directory_creates_replaces_and_keeps_the_old_one_on_failure(tmp_path):
  path = tmp_path / "a" / "data"
  for text in ("one", "two"):  # Created, then replaced whole.
    with atomic_write.atomic_directory(path) as tmp:
      (tmp / f"{text}.txt").write_text(text)
  assert sorted(p.name for p in path.iterdir()) == ["two.txt"]
  assert path.stat().st_mode & 0o777 == 0o755  # Not mkdtemp's private 0700.
  with pytest.raises(RuntimeError, match="disk full"):
    with atomic_write.atomic_directory(path) as tmp:
      (tmp / "three.txt").write_text("three")
      raise RuntimeError("disk full")
  assert sorted(p.name for p in path.iterdir()) == ["two.txt"]
  assert sorted(p.name for p in path.parent.iterdir()) == ["data"]  # No temporary left.
