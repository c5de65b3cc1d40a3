"""SIGTERM, SIGINT and SIGUSR1 ask the job to stop at the next session boundary.

The handler only sets a flag; the ranks agree on stopping through a
collective at the session boundary (see api.execute), write a checkpoint and
exit with EXIT_STOPPED, which a batch script can use to requeue itself.  A
second SIGINT interrupts at once.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
_received: list[int] = []


def _handler(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGINT and _received.count(signal.SIGINT) >= 1:
        raise KeyboardInterrupt
    _received.append(signum)


def install() -> None:
    """Catch the stop signals (call once, from the main thread)."""
    _received.clear()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)


def requested() -> int:
    """The first stop signal received so far, or 0."""
    return _received[0] if _received else 0
