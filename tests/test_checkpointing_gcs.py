"""gs:// work directories: paths keep their scheme, metrics.jsonl survives a store that
cannot append, the tokenizer is shared through the bucket, the TFDS files stay local.

There is no bucket here: an in-memory fsspec file system is registered for `gs://`, so
`etils.epath` (which reads gs:// through fsspec when TensorFlow is absent) talks to it.
Like gcsfs it has no append: mode "a" warns and overwrites (fsspec/gcsfs#533).
Orbax's array files go through tensorstore's own GCS driver, which this fake does not
reach, so checkpoints themselves are not saved here.
"""

import importlib
import json
import warnings

from etils import epath
from etils.epath import backend as epath_backend
import fsspec
from fsspec.implementations import memory
import pytest

from conftest import load_config
from dgi_jax import checkpointing, metrics_log, paths, run_setup
from dgi_jax import trained_run
from dgi_jax.data import dataset as dataset_lib
from dgi_jax.data import tokenizer as tokenizer_lib

RUN = "gs://bucket/runs/a"


@pytest.fixture
def fake_gcs(monkeypatch):
  """A fresh in-memory gs:// for one test; returns its file system class."""

  class FakeGCS(memory.MemoryFileSystem):
    protocol = ("gs", "gcs")
    root_marker = ""
    store = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
      path = fsspec.utils.stringify_path(path)
      for prefix in ("gs://", "gcs://"):
        if path.startswith(prefix):
          path = path[len(prefix):]
      return path.strip("/")

    def _open(self, path, mode="rb", **kwargs):
      if "a" in mode:  # What gcsfs does.
        warnings.warn("Append mode 'a' is not supported in GCS. Using overwrite mode instead.")
        mode = mode.replace("a", "w")
      return super()._open(path, mode, **kwargs)

  # `fsspec.registry` is a read-only view of this dict; monkeypatch undoes the entries.
  registry = importlib.import_module("fsspec.registry")._registry  # pylint: disable=protected-access
  for name in ("gs", "gcs"):
    monkeypatch.setitem(registry, name, FakeGCS)
  clear_cache = epath_backend.fsspec_backend._get_filesystem.cache_clear  # pylint: disable=protected-access
  clear_cache()
  yield FakeGCS
  clear_cache()


def test_paths_keep_the_bucket_scheme(tmp_path, monkeypatch):
  assert str(checkpointing.checkpoint_dir(RUN)) == f"{RUN}/checkpoints"
  assert str(paths.as_path(RUN)) == RUN
  monkeypatch.chdir(tmp_path)  # Local relative paths still become absolute.
  assert str(checkpointing.checkpoint_dir("rel")) == str(tmp_path / "rel" / "checkpoints")
  assert str(tokenizer_lib.tokenizer_path(RUN, "b/c/1.0.0", 600)).startswith(f"{RUN}/")
  config = load_config("tiny")
  assert str(run_setup.data_dir(config, tmp_path)) == str(tmp_path / "tfds")
  with config.unlocked():
    config.data.tfds_dir = "gs://bucket/tfds"
  assert str(run_setup.data_dir(config, tmp_path)) == "gs://bucket/tfds"


def _records(path):
  return [json.loads(line) for line in epath.Path(path).read_text().splitlines()]


def test_metrics_survive_a_store_without_append(fake_gcs):
  del fake_gcs
  writer = metrics_log.MetricsWriter(RUN)
  for step in (1, 2, 3):
    writer.write(step, {"total": step / 10})
  writer = metrics_log.MetricsWriter(RUN)  # A resumed run keeps the earlier lines.
  writer.write(4, {"total": 0.4})
  writer.write(4, {"hit@10": 0.5}, kind="valid")
  records = _records(f"{RUN}/{metrics_log.METRICS_FILE}")
  assert [(r["step"], r["kind"]) for r in records] == [
      (1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "valid")]
  assert records[2]["total"] == pytest.approx(0.3)


def test_appending_on_the_fake_store_loses_lines(fake_gcs):
  """The fake behaves like gcsfs, so the test above would catch an appending writer."""
  del fake_gcs
  writer = metrics_log.MetricsWriter(RUN, append=True)
  with pytest.warns(UserWarning, match="Append mode"):
    writer.write(1, {"total": 1.0})
    writer.write(2, {"total": 2.0})
  assert [r["step"] for r in _records(f"{RUN}/{metrics_log.METRICS_FILE}")] == [2]


def test_rewriting_writer_writes_what_the_appending_one_does(tmp_path):
  for append in (True, False):
    (tmp_path / str(append)).mkdir()
    for start in (0, 2):  # Two writers: a run and its resumption.
      writer = metrics_log.MetricsWriter(tmp_path / str(append), append=append)
      for step in (start + 1, start + 2):
        writer.write(step, {"total": step / 3})
  appended = (tmp_path / "True" / metrics_log.METRICS_FILE).read_text()
  assert appended == (tmp_path / "False" / metrics_log.METRICS_FILE).read_text()
  assert [r["step"] for r in _records(tmp_path / "True" / metrics_log.METRICS_FILE)] == [1, 2, 3, 4]


def test_bucket_run_shares_the_tokenizer_and_keeps_tfds_files_local(fake_gcs, tmp_path,
                                                                    monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  config = load_config("tiny")
  run_data = run_setup.prepare_run_data(config, RUN)
  assert str(run_setup.data_dir(config, RUN)) == str(tmp_path / "cache" / "dgi_jax" / "tfds")
  assert (tmp_path / "cache" / "dgi_jax" / "tfds" / run_data.dataset.version /
          "dataset_info.json").is_file()
  saved = tokenizer_lib.tokenizer_path(f"{RUN}/tfds", run_data.dataset.version,
                                       config.data.vocab_size)
  assert saved.exists() and str(saved).startswith("gs://")
  assert not any(key.endswith(".array_record") or "array_record-" in key
                 for key in fake_gcs.store)
  loaded = tokenizer_lib.Tokenizer.load(saved)
  assert loaded.to_json() == run_data.tokenizer.to_json()
  # A second preparation (another process, or a resumed run) reads the bucket's file.
  assert run_setup.prepare_run_data(config, RUN).tokenizer.to_json() == loaded.to_json()


def test_tfds_files_on_a_bucket_are_refused_clearly(fake_gcs):
  del fake_gcs
  with pytest.raises(ValueError, match="array_record reads local files only"):
    dataset_lib.prepare_dataset(load_config("tiny").data, "gs://bucket/tfds")


def test_serving_commands_see_a_bucket_run_without_checkpoints(fake_gcs):
  del fake_gcs
  metrics_log.MetricsWriter(RUN).write(1, {"total": 1.0})  # The work directory exists.
  with pytest.raises(trained_run.WorkdirError, match="holds no checkpoints"):
    trained_run.read_config(RUN)
  with pytest.raises(trained_run.WorkdirError, match="does not exist"):
    trained_run.read_config("gs://bucket/runs/missing")
