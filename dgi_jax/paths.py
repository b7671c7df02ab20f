"""Local paths and object-store URIs (`gs://bucket/...`) under one type."""

from etils import epath


def as_path(path) -> epath.Path:
  """`path` as an `epath.Path`: local paths and `gs://bucket/...` alike.

  `pathlib.Path("gs://b/x")` is `gs:/b/x`, and `epath.Path.absolute()` / `resolve()`
  prefix a URI with the working directory, so only local paths are made absolute.
  """
  path = epath.Path(path)
  return path if is_uri(path) else path.absolute()


def is_uri(path) -> bool:
  """Whether `path` names an object store (`gs://`, `s3://`, ...) rather than a local file."""
  return "://" in str(path)
