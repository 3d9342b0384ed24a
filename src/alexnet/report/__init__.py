"""Figures (the paper's Figures 1, 3 and 4, training curves, confusion matrices, bar charts),
markdown tables and a run's report.md. See :mod:`alexnet.report.figures`,
:mod:`alexnet.report.tables`, :mod:`alexnet.report.markdown` and :mod:`alexnet.report.run`.

Names are imported lazily, so that using the tables does not pull in matplotlib."""

from __future__ import annotations

import importlib
from typing import Any

_FIGURES = ("filter_grid", "plot_bars", "plot_confusion", "plot_curves", "plot_filters", "plot_neighbors",
            "plot_predictions", "plot_scaling", "plot_series")
_MARKDOWN = ("PAPER_REFERENCE", "write_run_report")
_TABLES = ("format_value", "markdown_table")

__all__ = [*_FIGURES, *_MARKDOWN, *_TABLES]


def __getattr__(name: str) -> Any:
    if name in _FIGURES:
        return getattr(importlib.import_module("alexnet.report.figures"), name)
    if name in _MARKDOWN:
        return getattr(importlib.import_module("alexnet.report.markdown"), name)
    if name in _TABLES:
        return getattr(importlib.import_module("alexnet.report.tables"), name)
    raise AttributeError(f"module 'alexnet.report' has no attribute {name!r}")
