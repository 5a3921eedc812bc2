"""Stop requests from SIGINT / SIGTERM, turned into a clean end of the run (status `interrupted`).

Only the CLI installs the handlers; a library user's process keeps its own signal handling. A run
checks `requested()` before every step and ends through the normal path: last values logged, a
checkpoint, summary.json, exit status 128 + the signal number.
"""

from __future__ import annotations

import signal

_received: int | None = None
_early: int | None = None  # a signal that came while the command was still starting up


class StartUpInterrupted(KeyboardInterrupt):
    """A signal during start-up, acted on once start-up is over: nothing has been written."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _handler(signum, frame) -> None:
    global _received
    _received = signum


def _early_handler(signum, frame) -> None:
    global _early
    _early = signum


def defer() -> None:
    """While the command starts up (imports, validation, building), SIGINT / SIGTERM only record themselves:
    a KeyboardInterrupt inside an import can leave a package half-imported (numpy's lazy submodules then
    recurse without end, a traceback instead of a clean exit). `start_up_over` acts on the record."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _early_handler)


def start_up_over() -> None:
    """Raise StartUpInterrupted if a signal came during start-up; else restore the default handlers (a command
    that routes signals to stop requests calls `install` next)."""
    if _early is not None:
        raise StartUpInterrupted(_early)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def install() -> None:
    """Route SIGINT and SIGTERM to a stop request (called again after Lightning installs its own); a signal
    recorded during start-up ends the command first (StartUpInterrupted)."""
    if _early is not None:
        raise StartUpInterrupted(_early)
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
