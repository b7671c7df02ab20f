"""SIGTERM-safe training: stop at the next step boundary, agreed by every process.

On one process a SIGTERM handler sets a flag. On several processes JAX's preemption
service (started by `jax.distributed.initialize`) catches the signal, and
`reached_preemption_sync_point(step)` returns True on every process at the same step —
a per-step collective is not needed, and all processes save the same step.

This works on CPU too (gloo collectives; tests/test_multihost.py signals one of two
processes). Measured on 2 CPU cores: the per-step call costs ~0.1-1.4 us, where an
all-gather of a "stop requested" flag (`multihost_utils.process_allgather`) costs ~3 ms.
The signal is noticed with up to 1 s delay (XLA's SIGTERM listener polls once a second,
`preemption_notifier.cc`); the processes then stop at the step after the largest one any
of them had reached. Every process must call `should_stop` at every step, starting from
the same step (the training loop does).
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionGuard:
  """Context manager: `should_stop(step)` turns True once a SIGTERM arrived."""

  def __init__(self):
    self._requested = threading.Event()
    self._previous_handler = None

  def __enter__(self) -> "PreemptionGuard":
    # With several processes, JAX's own notifier owns SIGTERM; replacing it would hide the
    # signal from the other processes' sync point.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._requested.set()

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint and leave after `step` (every process gets the same answer)."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested.is_set()
