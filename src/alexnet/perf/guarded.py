"""A benchmark run of guarded rows: each measurement is one row of one results file, rewritten after
every row (:mod:`alexnet.perf.results`), so that a killed run keeps what it measured. A row that
raises becomes an ``error`` row, one that runs past its time limit too (a hung loader worker cannot
block the run: :func:`alexnet.perf.timing.time_limit`), and one that would end past the run's
deadline is recorded as ``skipped`` without running; a phase outside the rows (a dataset build, a
FLOP count) that fails is recorded under ``errors``. Nothing that fails stops the run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from alexnet.perf import timing
from alexnet.perf.results import write_results


def error_line(e: BaseException) -> str:
    """The exception's type and the first line of its message (at most 300 characters)."""
    text = str(e).splitlines()[0][:300] if str(e) else ""
    return f"{type(e).__name__}: {text}"


class GuardedRun:
    """The rows of one run and its results file at ``path``.

    ``env``: the environment the file records (:func:`alexnet.environment.environment`);
    ``row_fields``: what every row starts with (device, versions, date, git SHA); ``fields()``: the
    file's other fields at each save (the configuration, FLOP counts); ``deadline``: seconds after
    ``t0`` (a ``time.perf_counter()`` value) by which the run should end (0: none); ``row_timeout``:
    seconds a row or phase may take (None or 0: no limit); ``cleanup`` runs after every row."""

    def __init__(self, path: Path, env: dict[str, Any], row_fields: dict[str, Any], *,
                 fields: Callable[[], dict[str, Any]] = dict, deadline: float = 0.0, row_timeout: float | None = None,
                 t0: float | None = None, cleanup: Callable[[], None] = lambda: None, verbose: bool = False,
                 log: Callable[[str], None] = lambda s: print(s, flush=True)) -> None:
        self.path, self.env, self.row_fields, self.fields = Path(path), env, row_fields, fields
        self.deadline, self.row_timeout = deadline, row_timeout
        self.t0 = time.perf_counter() if t0 is None else t0
        self.cleanup, self.verbose, self.log = cleanup, verbose, log
        self.rows: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []  # phases outside the rows that failed
        self.plan: list[dict[str, Any]] = []  # the rows planned, with their estimates

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def save(self) -> None:
        write_results(self.path, {**self.row_fields, **self.fields(), "errors": self.errors, "plan": self.plan,
                                  "wall_s": round(self.elapsed(), 1), "rows": self.rows}, self.env)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {**self.row_fields, **row}
        self.rows.append(row)
        self.save()
        return row

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run a phase outside the rows; a failure is recorded (None returned), not raised."""
        try:
            with timing.time_limit(self.row_timeout):
                return fn()
        except Exception as e:  # noqa: BLE001 - what fails is recorded; the rows that need it fail on their own
            self.errors.append({"phase": name, "error": error_line(e)})
            self.save()
            self.log(f"error {name}: {error_line(e)}")
            return None

    def measure(self, what: dict[str, Any], cost_s: float, fn: Callable[[], dict[str, Any] | None]) -> None:
        """One row: ``skipped`` when it would end past the deadline (``cost_s`` its estimate); an
        ``error`` row when ``fn`` raises or runs past the row timeout; else ``what`` + what ``fn``
        returns + ``row_s``, the seconds it took (``fn`` returning None: no row)."""
        if self.deadline > 0 and self.elapsed() + cost_s > self.deadline:
            reason = f"deadline: {self.elapsed():.0f}s elapsed + ~{cost_s:.0f}s > {self.deadline:.0f}s"
            self.log(f"skip  {what.get('mode', '')} {what.get('model') or ''} {what.get('variant', '')} "
                     f"{what.get('step', what.get('loader', ''))}: {reason}")
            self.add({**what, "img_per_s": None, "skipped": reason})
            return
        t = time.perf_counter()
        try:
            with timing.time_limit(self.row_timeout):
                row = fn()
        except Exception as e:  # noqa: BLE001 - one failing row must not lose the others
            self.add({**what, "img_per_s": None, "error": error_line(e)})
            self.log(f"error {what}: {error_line(e)}")
            return
        finally:
            self.cleanup()
        if row is not None:
            self.add({**what, **row, "row_s": round(time.perf_counter() - t, 1)})
        if self.verbose:
            self.log(f"      ({time.perf_counter() - t:.1f} s)")


__all__ = ["GuardedRun", "error_line"]
