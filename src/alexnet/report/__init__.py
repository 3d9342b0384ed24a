"""Figures (the paper's Figures 1, 3 and 4, training curves, confusion matrices, bar charts) and
markdown reports for runs and experiments. See :mod:`alexnet.report.figures` and
:mod:`alexnet.report.markdown`.

Names are imported lazily, so that ``alexnet.report.markdown`` (used by training) does not pull in
matplotlib."""

from __future__ import annotations

import importlib
from typing import Any

_FIGURES = ("filter_grid", "plot_bars", "plot_confusion", "plot_curves", "plot_filters", "plot_neighbors",
            "plot_predictions", "plot_series")
_MARKDOWN = ("PAPER_REFERENCE", "environment", "format_value", "markdown_table", "read_metrics", "write_run_report")

__all__ = [*_FIGURES, *_MARKDOWN]


def __getattr__(name: str) -> Any:
    if name in _FIGURES:
        return getattr(importlib.import_module("alexnet.report.figures"), name)
    if name in _MARKDOWN:
        return getattr(importlib.import_module("alexnet.report.markdown"), name)
    raise AttributeError(f"module 'alexnet.report' has no attribute {name!r}")
