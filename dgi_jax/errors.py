"""Errors a user can fix, and the one line the command line prints for them.

`dgi` prints `dgi <command>: error: <message>` and exits 1 for every `UserError` (and for
the few expected errors that other modules define, see `main.py`); anything else is a bug
and keeps its traceback. A file system that refuses a write (read-only, full, no
permission) is the user's to fix too, however deep in a library the write failed, so
`disk_error` finds such an `OSError` anywhere in an exception's chain, or the errno that
tensorstore (Orbax's array writer) quotes in the message of the `ValueError` it raises.
"""

import errno
import os
import re
from typing import Optional

# errno values that mean the disk or its permissions, not the program, stopped a write.
DISK_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "not a directory",
}


class UserError(Exception):
  """An expected error: a bad flag, config value, input file or work directory."""


class ConfigError(UserError, ValueError):
  """A config value (or command-line flag) that cannot be used; names the field."""


_TRACEBACK = "Traceback (most recent call last):"


def one_line(text: str) -> str:
  """`text` on one line: later lines are joined with '; '; of a traceback inside it (a
  config file's error, as ml_collections reports it) only the exception's own line."""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  if _TRACEBACK in lines:
    lines = lines[:lines.index(_TRACEBACK)] + lines[-1:]
  return "; ".join(lines)


# tensorstore's errors: `Failed writing: "<file>": ... [os_error_code='28']`.
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='(\d+)'")
_TENSORSTORE_FILE = re.compile(r'(?:writing|opening|creating)[^"]*"([^"]+)"', re.IGNORECASE)


def _as_os_error(error: BaseException) -> Optional[OSError]:
  if isinstance(error, OSError):
    return error if error.errno in DISK_ERRNOS else None
  code = _TENSORSTORE_ERRNO.search(str(error))
  if code is None or int(code[1]) not in DISK_ERRNOS:
    return None
  files = _TENSORSTORE_FILE.findall(str(error))
  return OSError(int(code[1]), DISK_ERRNOS[int(code[1])], files[-1] if files else None)


def disk_error(error: BaseException) -> Optional[OSError]:
  """The first error in `error`'s cause/context chain that is a `DISK_ERRNOS` one."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    found = _as_os_error(error)
    if found is not None:
      return found
    error = error.__cause__ or error.__context__
  return None


def describe_disk_error(error: OSError) -> str:
  """One line for an error `disk_error` found: the file, or the folder when the whole
  file system refuses (the file may be a temporary one the user never named)."""
  reason = DISK_ERRNOS[error.errno]
  name = getattr(error, "filename2", None) or error.filename  # A rename's target.
  if not name:
    return f"the file system refused a write: {reason}"
  if error.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
    return f"cannot write to {os.path.dirname(os.fspath(name))}: {reason}"
  return f"{name}: {reason}"
