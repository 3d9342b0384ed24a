"""Progress output that suits both a terminal and a log file.

On a terminal a tqdm bar redraws in place. Anywhere else (a file, a pipe, a batch scheduler's
log) redrawing writes a carriage return per update and a log fills with bars, so there
:class:`Progress` prints a plain line every ``ALEXNET_LOG_EVERY`` seconds (default 30; ``0``
turns the periodic lines off) and the caller prints its own summary line (one per epoch, one per
split), as Lightning and timm do. Every command's ``--log-every SECONDS`` sets the same variable,
so worker and torchrun processes see it too.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from alexnet.errors import UserError

ENV = "ALEXNET_LOG_EVERY"
DEFAULT_EVERY = 30.0


def log_every() -> float:
    """Seconds between progress lines when the output is not a terminal (``$ALEXNET_LOG_EVERY``)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{ENV}={raw!r}: expected a number of seconds (0 = no periodic lines)") from None
    if not value >= 0:
        raise UserError(f"{ENV}={raw!r}: expected a number of seconds ≥ 0 (0 = no periodic lines)")
    return value


def set_log_every(seconds: float) -> None:
    """What ``--log-every`` does: the interval for this process and the processes it starts."""
    if not seconds >= 0:
        raise UserError(f"--log-every {seconds:g}: expected a number of seconds ≥ 0 (0 = no periodic lines)")
    os.environ[ENV] = f"{seconds:g}"


def is_terminal(file: IO[str]) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # a closed or file-like object without a descriptor
        return False


def _count(n: float) -> str:
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.1f}"


class Progress:
    """``tqdm``'s interface subset the project uses (``update``, ``set_postfix``,
    ``set_postfix_str``, ``total``, ``close``), drawn as a bar on a terminal and as a line every
    :func:`log_every` seconds elsewhere. ``enabled=False`` prints nothing."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, initial: int = 0, enabled: bool = True,
                 file: IO[str] | None = None, unit_scale: bool = False, every: float | None = None, **tqdm_kwargs: Any) -> None:
        self.file = file if file is not None else sys.stderr
        self.desc, self.unit, self.total, self.n = desc, unit, total, initial
        self.enabled, self.unit_scale = enabled, unit_scale
        self.every = log_every() if every is None else every
        self._postfix = ""
        self._bar = None
        self._t0 = self._last = time.monotonic()
        self._n0 = initial
        if enabled and is_terminal(self.file):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                             file=self.file, dynamic_ncols=True, **tqdm_kwargs)

    # -- the tqdm subset --------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and self.every > 0 and time.monotonic() - self._last >= self.every:
            self._line()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in values.items()), refresh=refresh)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=refresh)

    def set_total(self, total: int) -> None:
        """Correct an estimated total (the count of a tar read as a stream)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the plain line ---------------------------------------------------------------------------
    def _line(self) -> None:
        now = time.monotonic()
        rate = (self.n - self._n0) / max(now - self._t0, 1e-9)
        if self.unit_scale:  # bytes: 12.3MB/1.2GB
            from tqdm import tqdm

            done = tqdm.format_sizeof(self.n, self.unit, 1024)
            done += f"/{tqdm.format_sizeof(self.total, self.unit, 1024)}" if self.total else ""
            speed = tqdm.format_sizeof(rate, self.unit, 1024)
        else:
            done = f"{_count(self.n)}/{_count(self.total)} {self.unit}" if self.total else f"{_count(self.n)} {self.unit}"
            speed = f"{rate:,.1f} {self.unit}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        tail = f", {self._postfix}" if self._postfix else ""
        print(f"{self.desc}: {done}{pct}, {speed}/s{tail}", file=self.file, flush=True)
        self._last = now
