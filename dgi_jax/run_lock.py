"""One training run per work directory: an advisory lock on `<workdir>/.train.lock`.

Two `dgi train` on one work directory interleave their metrics lines and race on the
checkpoints, so the second is refused. The lock is `flock` on an open file: the kernel
drops it when the holder exits in any way (SIGKILL and crashes included), so there is
no stale lock to clean up, and the file itself is left in place (removing it could let
a third run lock a new file while the second still holds the old one). The file holds
the holder's pid, for the message only.

Object stores (gs://) have no locks: there the lock is skipped. With several processes
only process 0 locks (the others share its work directory).
"""

import contextlib
import fcntl
import os
from typing import Iterator

from dgi_jax import errors

LOCK_FILE = ".train.lock"


class RunLockedError(errors.UserError):
  """Another process is training in the work directory."""


def _holder(fd: int) -> str:
  """' (pid N)' from the lock file, or '' when it holds none."""
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 64).decode("ascii", "replace").strip()
  return f" (pid {text})" if text.isdigit() else ""


@contextlib.contextmanager
def hold(workdir, enabled: bool = True) -> Iterator[None]:
  """Holds the work directory's training lock for the block.

  Raises:
    RunLockedError: another process holds it.
    OSError: the lock file cannot be created (a read-only work directory, for one).
  """
  if not enabled or "://" in os.fspath(workdir):
    yield
    return
  path = os.path.join(os.fspath(workdir), LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise RunLockedError(
          f"work directory {workdir} is in use by another `dgi train`{_holder(fd)}; wait "
          "for it to finish (or stop it), or train in another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    yield
  finally:
    os.close(fd)  # Closing the last descriptor releases the lock.
