"""Figures (the paper's Figures 1, 3 and 4, training curves, confusion matrices, bar charts) and
markdown reports for runs and experiments. See :mod:`alexnet.report.figures` and
:mod:`alexnet.report.markdown`."""

from alexnet.report.figures import (
    filter_grid,
    plot_bars,
    plot_confusion,
    plot_curves,
    plot_filters,
    plot_neighbors,
    plot_predictions,
    plot_series,
)
from alexnet.report.markdown import (
    PAPER_REFERENCE,
    environment,
    format_value,
    markdown_table,
    read_metrics,
    write_run_report,
)

__all__ = [
    "filter_grid",
    "plot_bars",
    "plot_confusion",
    "plot_curves",
    "plot_filters",
    "plot_neighbors",
    "plot_predictions",
    "plot_series",
    "PAPER_REFERENCE",
    "environment",
    "format_value",
    "markdown_table",
    "read_metrics",
    "write_run_report",
]
