"""Ctrl-C, SIGTERM and a scheduler's warning (SIGUSR1), the one mechanism of every command.

SIGUSR1 is what a batch scheduler sends before it ends a job (SLURM's ``--signal=USR1@SECONDS``):
it is SIGTERM with notice, and is treated as SIGTERM everywhere (exit 143), except that a repeated
one is the same warning again (it may reach a process both directly and through torchrun's
agent), never the "second signal" that stops at once.

* :func:`install` (the command line's first act) makes these signals unwind the command like
  Ctrl-C (KeyboardInterrupt, exit 130; :class:`~alexnet.errors.Terminated`, exit 143), so cleanup
  code runs, except while Python is importing a module: an exception thrown into an import leaves
  half-initialised modules behind (numpy's, torch's), and the cleanup that follows fails on them
  with a traceback. A signal that arrives during an import is only recorded, and acted on at the
  first point where no import is running (checked every few milliseconds), or taken over by a
  :class:`StopRequest` that starts before then.
* :class:`StopRequest` (a context manager, main thread only) turns the first SIGINT, SIGTERM or
  SIGUSR1 into a request to stop at the work's next consistent point (the caller polls ``requested``,
  writes what it needs to resume, then calls :meth:`StopRequest.stop` or exits with
  :meth:`StopRequest.exit_code`); a second one stops at once. Work that is cheaper to redo than to
  finish runs inside :meth:`StopRequest.cut_short`, where the first signal raises :class:`CutShort`.
  ``prepare``'s writers and the training loop both stop this way.
* :func:`worker_signals` is what a worker process does with them."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from alexnet.errors import Terminated

RETRY_S = 0.02  # how often a signal recorded during an import is looked at again
_pending: list[int] = []  # the first signal that arrived while a module was being imported
WARNING = signal.SIGUSR1  # a scheduler's notice that the job will be ended soon: SIGTERM with notice
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, WARNING)


def name(signum: int | None) -> str:
    """``SIGINT``, ``SIGTERM``, ``SIGUSR1``; a stop another process asked for (None) reads as SIGTERM."""
    return signal.Signals(signum).name if signum else "SIGTERM"


def _importing(frame: Any) -> bool:
    """Whether the interrupted code is inside an import (a frame of importlib's bootstrap)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def stop_now(signum: int) -> None:
    """Unwind the command: Terminated for SIGTERM and SIGUSR1 (exit 143), KeyboardInterrupt for SIGINT (130)."""
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated


def _unwind(signum: int, frame: Any) -> None:
    if _importing(frame):
        if not _pending:
            _pending.append(signum)
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    stop_now(signum)


def _retry(signum: int, frame: Any) -> None:
    if not _pending:
        return
    if _importing(frame):
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    stop_now(take_pending())  # type: ignore[arg-type]


def take_pending() -> int | None:
    """The signal recorded during an import and not yet acted on (forgetting it), or None: a
    handler installed later takes it over as if it had just arrived."""
    if not _pending:
        return None
    if threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)
    return _pending.pop()


def install() -> Callable[[], None]:
    """SIGINT, SIGTERM and SIGUSR1 unwind the command (see the module docstring); returns what restores
    the handlers found. Leaves alone a signal whose handler is not the default (a caller that
    set its own, or SIGINT ignored as in a background job), and does nothing outside the main
    thread."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL, WARNING: signal.SIG_DFL,
                signal.SIGALRM: signal.SIG_DFL}
    previous = {s: signal.getsignal(s) for s in defaults}
    mine = {s: _retry if s == signal.SIGALRM else _unwind for s, d in defaults.items() if previous[s] == d}
    for s, h in mine.items():
        signal.signal(s, h)

    def restore() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _pending.clear()
        for s in mine:
            signal.signal(s, previous[s])

    return restore


class CutShort(Exception):
    """The first signal arrived inside :meth:`StopRequest.cut_short`: that work is abandoned."""


class StopRequest:
    """Ctrl-C, SIGTERM or SIGUSR1 while writing: the first one asks the run to stop at the next consistent
    point, where it writes a checkpoint so that a rerun resumes there; a second one stops at once
    (unless both are SIGUSR1: the scheduler's warning, repeated, still waits for that point).
    :meth:`stop` raises KeyboardInterrupt (exit 130) or Terminated (143); :meth:`exit_code` is the
    same code for a caller that returns it. ``message``, when given, is printed to stderr on the
    first signal. A request the work never looked at stops the command as the block ends, unless
    ``stop_if_unanswered`` is false (work whose last consistent point is its end: the training
    loop, which then finishes). Outside the main thread (where no handler can be installed) it
    does nothing."""

    def __init__(self, message: str | None = None, *, stop_if_unanswered: bool = True) -> None:
        self.requested = False
        self.signum: int | None = None
        self.message = message
        self.stop_if_unanswered = stop_if_unanswered
        self._cutting = False
        self._previous: dict[int, Any] = {}

    def stop(self) -> None:
        stop_now(self.signum or signal.SIGINT)

    def exit_code(self) -> int:
        """130 after SIGINT, 143 otherwise (SIGTERM, SIGUSR1, or a stop another process asked for)."""
        return 130 if self.signum == signal.SIGINT else 143

    @contextmanager
    def cut_short(self) -> Iterator[None]:
        """Inside this block the first signal raises :class:`CutShort` at once (the work is redone
        on resume) instead of waiting for the next consistent point."""
        self._cutting = True
        try:
            yield
        finally:
            self._cutting = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == WARNING and self.signum == WARNING:
            return  # the same warning again (directly and through torchrun's agent): already asked for
        if self.requested:
            self.stop()
        self.requested, self.signum = True, signum
        if self.message:
            print(self.message, file=sys.stderr)
        if self._cutting:
            raise CutShort

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
            pending = take_pending()
            if pending is not None:  # arrived while the command was starting: stop at the first point
                self._handle(pending, None)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        if self.requested and exc_type is None and self.stop_if_unanswered:  # never a lost signal
            self.stop()


def worker_signals() -> None:
    """In a worker process: ignore SIGINT and SIGUSR1 (Ctrl-C reaches the whole process group, a
    scheduler's warning may reach every process of the job; the main process handles them and stops
    the workers) and restore SIGTERM's default (a forked worker inherits the parent's handler; the
    default lets the parent's ``terminate()`` end it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(WARNING, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
