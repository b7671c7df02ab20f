"""Host memory: keep what XLA's CPU runtime frees for its next call (glibc only).

XLA's CPU runtime allocates each call's temporaries as one block (428 MB for the default
config's train step), above glibc's mmap threshold, so every step mmap()s it, page-faults
it in 4 KiB at a time (the kernel zeroing each page: ~100,000 faults and ~200 ms of
system time a step, measured by `speed/profile_step.py`) and munmap()s it. With mmap off,
one arena and no trimming, the next step reuses the block: the step ran 1.6-1.8x faster
on 2 cores. The process keeps its peak memory instead of returning it to the OS.
"""

import ctypes

# mallopt parameters (<malloc.h>).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory_in_heap() -> bool:
  """Serves every allocation from one sbrk heap that is never trimmed.

  Must run before JAX starts its threads: they would get arenas of their own, which map
  large blocks regardless. Returns False where it does not apply (not glibc). The
  alternative, set before the process starts: GLIBC_TUNABLES=glibc.malloc.hugetlb=1
  (mapped blocks get transparent huge pages: ~300 faults a step instead of ~100,000).
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_MAX, 0) and
                libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
  except (OSError, AttributeError):
    return False
