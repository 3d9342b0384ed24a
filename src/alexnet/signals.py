"""Ctrl-C and SIGTERM during long work: :class:`StopRequest` (a context manager, main thread
only) turns the first SIGINT or SIGTERM into a request to stop at the work's next consistent point
(the caller polls ``requested``, writes what it needs to resume, then calls
:meth:`StopRequest.stop`); a second one stops at once. :func:`worker_signals` is what a worker
process does with the two signals."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from alexnet.errors import Terminated


class StopRequest:
    """Ctrl-C or SIGTERM while writing: the first one asks the run to stop at the next consistent
    point, where it writes a checkpoint so that a rerun resumes there; a second one stops at once.
    :meth:`stop` raises KeyboardInterrupt (exit 130) or Terminated (143). ``message``, when given,
    is printed to stderr on the first signal. Outside the main thread (where no handler can be
    installed) it does nothing."""

    def __init__(self, message: str | None = None) -> None:
        self.requested = False
        self.signum: int | None = None
        self.message = message
        self._previous: dict[int, Any] = {}

    def stop(self) -> None:
        raise Terminated if self.signum == signal.SIGTERM else KeyboardInterrupt

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.stop()
        self.requested, self.signum = True, signum
        if self.message:
            print(self.message, file=sys.stderr)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


def worker_signals() -> None:
    """In a worker process: ignore SIGINT (Ctrl-C reaches the whole process group; the main
    process handles it and stops the workers) and restore SIGTERM's default (a forked worker
    inherits the parent's handler; the default lets the parent's ``terminate()`` end it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
