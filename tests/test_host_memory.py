"""host_memory: a large block freed and allocated again is reused, not mapped afresh."""

import subprocess
import sys

import pytest

_REALLOCATE = """
import ctypes, resource, sys
from dgi_jax import host_memory
if sys.argv[1] == "keep":
  assert host_memory.keep_freed_memory_in_heap()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
size = 200 * 2**20  # Above glibc's mmap threshold, as XLA's per-call temporaries are.
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(ctypes.c_void_p(block))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size); ctypes.memset(block, 1, size)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
  return int(subprocess.run([sys.executable, "-c", _REALLOCATE, mode], check=True,
                            capture_output=True, text=True).stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_block_is_reused_without_page_faults():
  # 200 MB in 4 KiB pages is ~49,000 faults when the block is mapped afresh.
  assert _page_faults("default") > 40_000
  assert _page_faults("keep") < 1_000
