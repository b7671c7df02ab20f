"""Test setup: 8 simulated CPU devices, float32 matmuls at full precision, repo root importable."""

import os
import pathlib
import sys
import tempfile

# Must happen before JAX touches a device.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests (and the training subprocesses they start) compile the same tiny programs:
# a persistent compilation cache shared by the session compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="dgi_jax_test_compile_cache_"))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
sys.path.insert(0, str(REPO_ROOT))


def load_config(name: str, *args: str):
  """Loads `configs/<name>.py` (`get_config(*args)`)."""
  from dgi_jax import config_files  # pylint: disable=g-import-not-at-top
  return config_files.load(name, *args)


@pytest.fixture
def tiny_config():
  return load_config("tiny")


# Fixtures shared by the CLI tests: a tiny trained work directory, `dgi` in-process.
from run_fixtures import dgi, run_copy, tiny_run  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _no_encoder_cache_held_across_tests():
  """Each test builds its own frozen-encoder cache: none carries over from an earlier
  test's run in this process (`encoder_cache.take_held`)."""
  from dgi_jax import encoder_cache  # pylint: disable=g-import-not-at-top
  encoder_cache.release_held()
  yield
  encoder_cache.release_held()
