"""SIGTERM, SIGINT and SIGUSR1 ask the job to stop at the next session boundary.

The handler only sets a flag; the ranks agree on stopping through a
collective at the session boundary (hsmpi.engine.observers.StopRequests),
write a checkpoint and exit with EXIT_STOPPED, which a batch script can use
to requeue itself.  A second SIGINT interrupts at once.  The command line
installs the handlers; a Python program calling `hsmpi.run` may too, and
`uninstall` gives it its own back.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
_received: list[int] = []
_previous: dict[int, Any] = {}


def _handler(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGINT and _received.count(signal.SIGINT) >= 1:
        raise KeyboardInterrupt
    _received.append(signum)


def install() -> None:
    """Catch the stop signals (from the main thread); forget any stop asked for before."""
    _received.clear()
    for sig in STOP_SIGNALS:
        previous = signal.signal(sig, _handler)
        if previous is not _handler:
            _previous[sig] = previous


def uninstall() -> None:
    """The handlers there were before `install`, and no stop pending."""
    _received.clear()
    for sig, previous in _previous.items():
        signal.signal(sig, previous)
    _previous.clear()


def requested() -> int:
    """The first stop signal received so far, or 0."""
    return _received[0] if _received else 0
