"""Markdown tables: :func:`markdown_table` and the cell formatting it uses, :func:`format_value`; and
:func:`finite`, the number a table cell or a plot takes from a logged value."""

from __future__ import annotations

import fnmatch
import json
import math
from typing import Any, Iterable, Mapping

__all__ = ["finite", "format_value", "markdown_table", "mean_std", "pm"]


def finite(v: Any) -> float | None:
    """A logged value as a finite float, else None: None, strings, booleans, NaN and infinities are
    no number to show; a list (per-parameter-group learning rates) gives its first group's."""
    if v is None or isinstance(v, (str, bool)):
        return None
    if isinstance(v, (list, tuple)):
        return finite(v[0]) if v else None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def format_value(value: Any, fmt: str | None = None) -> str:
    """One table cell. ``fmt`` is ``"pct"`` (a fraction shown as a percentage, 2 decimals:
    0.407 → ``40.70%``), a format spec (``".3f"``, ``",d"``) or a template (``"{:.1e}"``); without one,
    floats get 4 significant digits (no exponent below 10⁶), ints and strings are shown as they are,
    ``None`` as an em dash. ``|`` and newlines are escaped so a cell cannot break the table.
    """
    if value is None:
        return "—"
    if fmt and not isinstance(value, (str, bool)):
        try:
            if fmt == "pct":
                return f"{100.0 * float(value):.2f}%"
            return fmt.format(value) if "{" in fmt else format(value, fmt)
        except (TypeError, ValueError):
            pass  # a value the format does not fit (a string in a numeric column): shown as is
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            text = str(value)
        elif value == 0 or 1e-4 <= abs(value) < 1e4:
            text = f"{value:.4g}"
        elif 1e4 <= abs(value) < 1e6:
            text = f"{value:.0f}"
        else:  # tiny or huge: an exponent reads better than a row of zeros
            text = f"{value:.3g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(format_value(v, fmt) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _format_for(column: str, formats: Mapping[str, str] | None) -> str | None:
    """An exact column name wins; otherwise the first glob pattern that matches (``"*_err": "pct"``)."""
    if not formats:
        return None
    if column in formats:
        return formats[column]
    for pattern, fmt in formats.items():
        if fnmatch.fnmatchcase(column, pattern):
            return fmt
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def markdown_table(
    rows: list[dict],
    columns: list[str] | None = None,
    formats: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """A GitHub-flavoured markdown table: header, separator, one line per row; ends with a newline.

    ``columns`` defaults to every key in order of first appearance; a missing value is an em dash.
    ``formats`` maps a column (or a glob such as ``"*_err"``) to a format for :func:`format_value`,
    e.g. ``{"top1_err": "pct"}`` shows 0.407 as ``40.70%``. ``headers`` renames columns in the header
    line only. Numeric columns are right-aligned.
    """
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    if not columns:
        return ""
    numeric = {c: any(_is_number(r.get(c)) for r in rows) and all(r.get(c) is None or _is_number(r.get(c)) for r in rows) for c in columns}
    header = "| " + " | ".join(format_value((headers or {}).get(c, c)) for c in columns) + " |"
    sep = "|" + "|".join("---:" if numeric[c] else "---" for c in columns) + "|"
    body = ["| " + " | ".join(format_value(r.get(c), _format_for(c, formats)) for c in columns) + " |" for r in rows]
    return "\n".join([header, sep, *body]) + "\n"


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (n − 1) of the finite values; std is None below two values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None, 0
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None, len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)), len(xs)


def pm(mean: float | None, std: float | None, pct: bool = True, digits: int = 2) -> str:
    """``40.70 ± 0.31%`` (a fraction as a percentage) or ``12.3 ± 0.4``; a dash for nothing."""
    if mean is None:
        return "—"
    scale, unit = (100.0, "%") if pct else (1.0, "")
    text = f"{mean * scale:.{digits}f}"
    if std is not None:
        text += f" ± {std * scale:.{digits}f}"
    return text + unit
