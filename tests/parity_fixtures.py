"""Fixtures shared by the PyTorch parity tests (import them into a test module)."""

import pytest
import torch

from conftest import load_config
from dgi_jax.models import pretrained
from dgi_jax.parity import compare


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
  # Tiny models gain nothing from intra-op threads, and on a small machine torch's
  # OpenMP threads contend with XLA's pool (a 5 ms backward was measured at 0.4 s).
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def minilm_config():
  """The tiny config on the bundled all-MiniLM-L6-v2 (skipped when not installed)."""
  try:
    directory = pretrained.bundled_minilm_dir()
  except pretrained.PretrainedError as e:
    pytest.skip(f"all-MiniLM-L6-v2 package not installed: {e}")
  return compare.with_pretrained_encoder(load_config("tiny"), directory)
