"""Stop requests from SIGINT / SIGTERM, turned into a clean end of the run (status `interrupted`).

Only the CLI installs the handlers; a library user's process keeps its own signal handling. A run
checks `requested()` before every step and ends through the normal path: last values logged, a
checkpoint, summary.json, exit status 128 + the signal number.
"""

from __future__ import annotations

import signal

_received: int | None = None


def _handler(signum, frame) -> None:
    global _received
    _received = signum


def install() -> None:
    """Route SIGINT and SIGTERM to a stop request (called again after Lightning installs its own)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handler)


def requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _received


class Stopped(Exception):
    """Long work (an eigensolve) given up at a stop request: nothing of it is kept, the state before it is."""


def reset() -> None:
    global _received
    _received = None
