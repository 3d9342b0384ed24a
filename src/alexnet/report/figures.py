"""The paper's figures, and the plots a run or an experiment report needs, written as PNG files.

Everything draws on a bare :class:`matplotlib.figure.Figure` attached to an Agg canvas: no
``pyplot``, no display, no global backend switch, so a library caller's own matplotlib state is left
alone. Each figure is drawn under matplotlib's default style (whatever the user's matplotlibrc says)
and uses no randomness, so the same inputs give the same PNG.

- :func:`plot_curves`: training / validation error per epoch with the learning-rate drops (§5).
- :func:`plot_filters`: the first-layer kernels, one block per GPU (Figure 3).
- :func:`plot_predictions`: test images with their top-5 predictions (Figure 4, left).
- :func:`plot_neighbors`: nearest neighbours in the last hidden layer (Figure 4, right).
- :func:`plot_confusion`, :func:`plot_bars`, :func:`plot_series`, :func:`plot_scaling`: generic plots for reports
  (Figure 1 is a :func:`plot_series` of training error against epochs for ReLU and tanh).

Errors are fractions everywhere in the package; the plots show them as percentages where the
value's name ends in ``_err`` (or ``_error``).
"""

from __future__ import annotations

import io
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, PercentFormatter

from alexnet.errors import UserError
from alexnet.files import atomic_write_bytes
from alexnet.report.tables import finite

__all__ = [
    "plot_curves",
    "plot_filters",
    "plot_predictions",
    "plot_neighbors",
    "plot_confusion",
    "plot_bars",
    "plot_scaling",
    "plot_series",
    "filter_grid",
]

# The paper marks the correct class's bar in red (Figure 4); the others in a muted blue.
CORRECT_COLOUR = "#d62728"
OTHER_COLOUR = "#8fb3d9"
DPI = 100

# Keys of matplotlib's defaults that are about the session, not the look of a figure.
_SESSION_KEYS = {"backend", "backend_fallback", "interactive", "webagg.port", "webagg.address", "webagg.open_in_browser", "webagg.port_retries"}


@contextmanager
def _style() -> Iterator[None]:
    """Matplotlib's default look, whatever the user's matplotlibrc says, so PNGs are reproducible."""
    rc = {k: v for k, v in matplotlib.rcParamsDefault.items() if k not in _SESSION_KEYS}
    rc.update({"font.size": 9, "axes.titlesize": 10, "figure.dpi": DPI, "savefig.dpi": DPI})
    with matplotlib.rc_context(rc):
        yield


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)  # Agg explicitly: PNG output without any display
    return fig


SOFTWARE = "alexnet (matplotlib)"  # the PNG's Software field


def png_written_by(path: str | Path, software: str) -> bool:
    """Whether ``path`` is a PNG whose Software field is ``software`` (how a command recognises its
    own earlier output, which it may replace)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.format == "PNG" and im.info.get("Software") == software


def _save(fig: Figure, path: str | Path, tight: bool = True, software: str = SOFTWARE) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    # Fixed metadata: the default embeds the matplotlib version only, but be explicit.
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None,
                pad_inches=0.08, metadata={"Software": software})
    atomic_write_bytes(path, buf.getvalue())  # never a torn PNG over a good one
    return path


def _numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()  # numpy has no bfloat16
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise UserError(f"{name}: not an array ({e})") from None


def _images_hwc(images: Any, name: str, ndim: int = 4) -> np.ndarray:
    """uint8 images (..., C, H, W) with C in (1, 3) → (..., H, W, 3) uint8 for imshow."""
    x = _numpy(images, name)
    if x.ndim != ndim or x.shape[-3] not in (1, 3):
        want = "N×3×H×W" if ndim == 4 else "Q×K×3×H×W"
        raise UserError(f"{name}: expected {want} images (1 or 3 channels), got shape {tuple(x.shape)}")
    if x.dtype != np.uint8:
        # Floats are taken as [0, 1]; anything else is clipped rather than wrapped around.
        scale = 255.0 if np.issubdtype(x.dtype, np.floating) else 1.0
        x = np.clip(np.nan_to_num(x.astype(np.float64) * scale), 0, 255).round().astype(np.uint8)
    x = np.moveaxis(x, -3, -1)  # (..., C, H, W) -> (..., H, W, C)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)  # grayscale shown as RGB so imshow uses no colour map
    return x


def _int_list(labels: Any, n: int, name: str) -> list[int]:
    arr = _numpy(labels, name).reshape(-1)
    if arr.shape[0] != n:
        raise UserError(f"{name}: {arr.shape[0]} labels for {n} images")
    return [int(v) for v in arr]


def _class_name(index: int, class_names: Sequence[str] | None, width: int = 24) -> str:
    """A short display name: ImageNet names list synonyms ("tabby, tabby cat"); keep the first."""
    if class_names is not None and 0 <= index < len(class_names):
        name = str(class_names[index]).split(",")[0].strip()
    else:
        name = str(index)
    return name if len(name) <= width else name[: width - 1] + "…"


def _is_fraction(key: str) -> bool:
    return key.endswith("_err") or key.endswith("_error")


def _pretty(key: str) -> str:
    """``val_top1_err`` → ``val top-1 error``."""
    s = key.replace("top1", "top-1").replace("top5", "top-5")
    if s.endswith("_err"):
        s = s[: -len("_err")] + " error"
    return s.replace("_", " ")


# --------------------------------------------------------------------------- training curves
_Series = Callable[..., tuple[list[float], list[float]]]  # (key, scale) -> (epochs, values)


def plot_curves(metrics: list[dict], path: str | Path) -> Path:
    """Top: train and val top-1 error and val top-5 error (%) against epochs, with a vertical line
    where the learning rate changes (the paper divides it by 10 when validation error stalls, §5).
    Bottom: training loss (and validation loss when logged), with the learning rate on a log axis.

    ``metrics`` are the rows of metrics.jsonl, one per epoch; missing or null values are skipped, so a
    run that validates only every few epochs, or has run a single epoch, plots as well.
    """
    if not metrics:
        raise UserError("metrics: no epochs to plot")
    rows = [dict(r) for r in metrics]
    for i, r in enumerate(rows):
        r.setdefault("epoch", i + 1)
    rows.sort(key=lambda r: finite(r.get("epoch")) or 0.0)
    epochs = [finite(r.get("epoch")) for r in rows]

    def series(key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for e, r in zip(epochs, rows):
            v = finite(r.get(key))
            if e is not None and v is not None:
                xs.append(e)
                ys.append(v * scale)
        return xs, ys

    marker = "o" if len(rows) <= 30 else None  # a single epoch must still show as a point
    with _style():
        fig = _figure(8.0, 6.5)
        ax_err, ax_loss = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        _error_panel(ax_err, series, marker)
        _loss_panel(ax_loss, series, marker)
        _learning_rate(ax_err, ax_loss, series)
        if len(set(e for e in epochs if e is not None)) <= 1:
            e = epochs[0] or 0.0
            ax_loss.set_xlim(e - 1, e + 1)
        fig.align_ylabels([ax_err, ax_loss])
        return _save(fig, path)


def _error_panel(ax_err: Any, series: _Series, marker: str | None) -> None:
    """Train/val top-1 and val top-5 error (%), the best validation error annotated."""
    plotted = 0
    for key, label, style in [
        ("train_top1_err", "train top-1", dict(color="C0", linestyle="-")),
        ("val_top1_err", "val top-1", dict(color="C1", linestyle="-")),
        ("val_top5_err", "val top-5", dict(color="C1", linestyle="--")),
    ]:
        xs, ys = series(key, 100.0)
        if xs:
            ax_err.plot(xs, ys, marker=marker, markersize=3, label=label, **style)
            plotted += 1
            if key == "val_top1_err":  # annotate the best validation error, the number people quote
                i = int(np.argmin(ys))
                ax_err.annotate(f"best {ys[i]:.2f}%", (xs[i], ys[i]), textcoords="offset points",
                                xytext=(0, -14), ha="center", fontsize=8, color="C1")
    ax_err.set_ylim(bottom=0)  # errors are read against 0, not against the best epoch
    ax_err.set_ylabel("error (%)")
    ax_err.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax_err.grid(True, alpha=0.3)
    if plotted:
        ax_err.legend(loc="best", fontsize=8)
    ax_err.set_title("Error rates per epoch")


def _loss_panel(ax_loss: Any, series: _Series, marker: str | None) -> None:
    """Train (and val) cross-entropy per epoch."""
    for key, label, colour in [("train_loss", "train loss", "C0"), ("val_loss", "val loss", "C1")]:
        xs, ys = series(key)
        if xs:
            ax_loss.plot(xs, ys, marker=marker, markersize=3, color=colour, label=label)
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.grid(True, alpha=0.3)
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))


def _learning_rate(ax_err: Any, ax_loss: Any, series: _Series) -> None:
    """The learning rate: a step line on a log axis under the loss, and a vertical line at every change."""
    lr_x, lr_y = series("lr")
    if not lr_x:
        if ax_loss.get_legend_handles_labels()[0]:
            ax_loss.legend(loc="upper right", fontsize=8)
        return
    ax_lr = ax_loss.twinx()
    ax_lr.step(lr_x, lr_y, where="post", color="0.55", linewidth=1, label="learning rate",
               marker="o" if len(lr_x) == 1 else None, markersize=3)
    if min(lr_y) > 0:
        ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate", color="0.45")
    ax_lr.tick_params(axis="y", colors="0.45", labelsize=7)
    handles = ax_loss.get_legend_handles_labels()[0] + ax_lr.get_legend_handles_labels()[0]
    ax_loss.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)
    changes = [(x0, x1, new) for (x0, old), (x1, new) in zip(zip(lr_x, lr_y), zip(lr_x[1:], lr_y[1:]))
               if not math.isclose(old, new, rel_tol=1e-9, abs_tol=0.0)]
    # A schedule that changes every epoch (warm-up, cosine) would be a wall of lines: mark
    # only discrete drops, as the paper's schedule has (three of them, §5).
    if 0 < len(changes) <= 12:
        for x0, x1, new in changes:
            xm = (x0 + x1) / 2  # between the last epoch at the old rate and the first at the new
            for ax in (ax_err, ax_loss):
                ax.axvline(xm, color="0.35", linestyle=":", linewidth=1)
            # The new rate, written on its step of the learning-rate line.
            ax_lr.annotate(f"{new:.3g}", (xm, new), textcoords="offset points", xytext=(3, 2),
                           ha="left", va="bottom", fontsize=7, color="0.35")


# --------------------------------------------------------------------------- Figure 3: kernels
def _normalise_kernels(w: np.ndarray) -> np.ndarray:
    """Each kernel min-max scaled to [0, 1] on its own (Figure 3 shows every kernel at full contrast).

    A constant kernel (max = min) becomes mid-grey instead of 0/0; non-finite weights count as 0.
    """
    w = np.nan_to_num(w.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    flat = w.reshape(w.shape[0], -1)  # (out, C·kh·kw)
    lo = flat.min(axis=1)[:, None, None, None]
    hi = flat.max(axis=1)[:, None, None, None]
    span = hi - lo
    return np.where(span > 0, (w - lo) / np.where(span > 0, span, 1.0), 0.5)


def _tile(kernels: np.ndarray, columns: int, gap: int) -> np.ndarray:
    """(n, kh, kw, 3) in [0, 1] → one (H, W, 3) image, row-major, white between kernels."""
    n, kh, kw, _ = kernels.shape
    cols = max(1, min(columns, n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * kh + (rows - 1) * gap, cols * kw + (cols - 1) * gap, 3))
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = r * (kh + gap), c * (kw + gap)
        grid[y : y + kh, x : x + kw] = kernels[i]
    return grid


def filter_grid(weight: torch.Tensor | np.ndarray, towers: int = 1, columns: int = 16, gap: int = 1) -> list[np.ndarray]:
    """The kernels of a first conv layer (out × C × kh × kw, C = 1 or 3) as one (H, W, 3) image in
    [0, 1] per tower: tower t holds kernels ``t·out/towers … (t+1)·out/towers − 1``, which is how a
    grouped conv2 (§3.2, ``groups=2``) splits conv1's output maps between the two GPUs.

    16 columns reproduce Figure 3's 3 rows of 16 per GPU for the paper's 96 kernels.
    """
    w = _numpy(weight, "weight")
    if w.ndim != 4 or w.shape[1] not in (1, 3):
        raise UserError(f"weight: expected first-layer kernels out×3×k×k (or out×1×k×k), got shape {tuple(w.shape)}")
    if towers < 1 or w.shape[0] % towers:
        raise UserError(f"towers: {w.shape[0]} kernels do not split into {towers} towers")
    k = _normalise_kernels(w)
    k = np.moveaxis(k, 1, -1)  # (out, C, kh, kw) -> (out, kh, kw, C)
    if k.shape[-1] == 1:
        k = np.repeat(k, 3, axis=-1)
    per = k.shape[0] // towers
    return [_tile(k[t * per : (t + 1) * per], columns, gap) for t in range(towers)]


def plot_filters(weight: torch.Tensor, path: str | Path, towers: int = 1, title: str | None = None,
                 software: str = SOFTWARE) -> Path:
    """Figure 3: the first-layer kernels, each normalised on its own and shown as RGB (grey for
    1-channel kernels), small gaps between kernels. With ``towers=2`` the kernels of tower 1 and
    tower 2 are two labelled blocks, "GPU 1" above "GPU 2", as the paper's 48 + 48.

    The axes are laid out in exact pixels and each kernel pixel is an integer number of screen
    pixels, so the kernels are crisp rather than resampled.
    """
    blocks = filter_grid(weight, towers=towers)
    n = _numpy(weight, "weight").shape[0]
    gh, gw = blocks[0].shape[:2]
    scale = int(min(16, max(1, 900 // gw)))  # screen pixels per kernel pixel
    aw, ah = gw * scale, gh * scale  # one block's axes, in pixels
    margin, label_h, title_h, block_gap = 12, 22 if towers > 1 else 0, 34 if title else 0, 10
    width = max(aw + 2 * margin, 360)
    height = title_h + towers * (label_h + ah) + (towers - 1) * block_gap + 2 * margin
    with _style():
        fig = _figure(width / DPI, height / DPI)
        if title:
            fig.text(0.5, 1 - (margin + 4) / height, title, ha="center", va="top", fontsize=11)
        top = height - margin - title_h
        per = n // towers
        for t, block in enumerate(blocks):
            top -= label_h
            left = (width - aw) / 2
            ax = fig.add_axes((left / width, (top - ah) / height, aw / width, ah / height))
            ax.imshow(block, interpolation="nearest", vmin=0.0, vmax=1.0, aspect="equal")
            ax.set_axis_off()
            if towers > 1:
                fig.text(left / width, (top + 4) / height, f"GPU {t + 1}  (kernels {t * per}–{(t + 1) * per - 1})",
                         ha="left", va="bottom", fontsize=9, fontweight="bold")
            top -= ah + block_gap
        return _save(fig, path, tight=False, software=software)


# --------------------------------------------------------------------------- Figure 4 (left)
def plot_predictions(
    images: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor | list[int],
    class_names: list[str],
    path: str | Path,
    k: int = 5,
) -> Path:
    """Figure 4, left: each image (uint8 N×3×H×W) with its true label under it and a bar chart of the
    model's top-k classes (``probs``: N×classes probabilities), the correct class's bar in red when it
    is among them. Up to four images per row.
    """
    imgs = _images_hwc(images, "images")
    p = _numpy(probs, "probs").astype(np.float64)
    n = imgs.shape[0]
    if p.ndim != 2 or p.shape[0] != n:
        raise UserError(f"probs: expected {n}×classes probabilities, got shape {tuple(p.shape)}")
    if n == 0:
        raise UserError("images: nothing to plot")
    truth = _int_list(labels, n, "labels")
    k = max(1, min(int(k), p.shape[1]))
    # Stable sort on −p: ties keep class order, so the same probabilities always give the same bars.
    top = np.argsort(-np.nan_to_num(p, nan=-np.inf), axis=1, kind="stable")[:, :k]
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    cell_w, img_h, bar_h = 2.3, 2.0, 0.22 * k + 0.55
    with _style():
        fig = _figure(cols * cell_w, rows * (img_h + bar_h))
        gs = fig.add_gridspec(2 * rows, cols, height_ratios=[img_h, bar_h] * rows, hspace=0.12, wspace=0.08)
        for i in range(n):
            r, c = divmod(i, cols)
            ax_img = fig.add_subplot(gs[2 * r, c])
            ax_img.imshow(imgs[i])
            ax_img.set_axis_off()
            ax_bar = fig.add_subplot(gs[2 * r + 1, c])
            # The true label sits between image and bars, as in the paper.
            ax_bar.set_title(_class_name(truth[i], class_names, 26), fontsize=9, fontweight="bold", pad=3)
            ys = np.arange(k)[::-1]  # best class on top
            colours = [CORRECT_COLOUR if top[i, j] == truth[i] else OTHER_COLOUR for j in range(k)]
            ax_bar.barh(ys, p[i, top[i]], height=0.8, color=colours)
            for j in range(k):
                ax_bar.text(0.01, ys[j], _class_name(int(top[i, j]), class_names, 26), va="center", ha="left", fontsize=7)
                covered = p[i, top[i, j]] > 0.9  # the bar reaches under the percentage: white on the bar
                ax_bar.text(0.99, ys[j], f"{100 * p[i, top[i, j]]:.0f}%", va="center", ha="right", fontsize=6,
                            color="white" if covered else "0.35", fontweight="bold" if covered else "normal")
            ax_bar.set_xlim(0, 1)
            ax_bar.set_ylim(-0.5, k - 0.5)
            ax_bar.set_xticks([])
            ax_bar.set_yticks([])
            for side in ("top", "right", "left"):
                ax_bar.spines[side].set_visible(False)
        return _save(fig, path)


# --------------------------------------------------------------------------- Figure 4 (right)
def plot_neighbors(
    queries: torch.Tensor,
    neighbors: torch.Tensor,
    path: str | Path,
    query_labels: torch.Tensor | list[int] | None = None,
    neighbor_labels: torch.Tensor | list[list[int]] | None = None,
    class_names: list[str] | None = None,
    software: str = SOFTWARE,
) -> Path:
    """Figure 4, right: one row per query (uint8 Q×3×H×W, first column) followed by its K nearest
    neighbours (uint8 Q×K×3×H×W) in the last hidden layer. With labels, each image is captioned and a
    neighbour's caption is green when its class matches the query's, red otherwise.
    """
    q = _images_hwc(queries, "queries")
    nb = _images_hwc(neighbors, "neighbors", ndim=5)
    nq, k = nb.shape[0], nb.shape[1]
    if nq != q.shape[0]:
        raise UserError(f"neighbors: {nq} rows of neighbours for {q.shape[0]} queries")
    if nq == 0 or k == 0:
        raise UserError("neighbors: nothing to plot")
    ql = _int_list(query_labels, nq, "query_labels") if query_labels is not None else None
    nl = None
    if neighbor_labels is not None:
        arr = _numpy(neighbor_labels, "neighbor_labels")
        if arr.shape != (nq, k):
            raise UserError(f"neighbor_labels: expected shape {(nq, k)}, got {tuple(arr.shape)}")
        nl = arr.astype(np.int64)
    captions = ql is not None or nl is not None
    cell = 1.25
    with _style():
        fig = _figure((k + 1.25) * cell, nq * (cell + (0.22 if captions else 0.0)) + 0.3)
        # A narrow empty column separates the query from its neighbours.
        gs = fig.add_gridspec(nq, k + 2, width_ratios=[1, 0.2] + [1] * k, wspace=0.05, hspace=0.3 if captions else 0.05)
        for r in range(nq):
            for j in range(-1, k):
                ax = fig.add_subplot(gs[r, 0 if j < 0 else j + 2])
                ax.imshow(q[r] if j < 0 else nb[r, j])
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
                if r == 0:
                    ax.set_title("query" if j < 0 else f"#{j + 1}", fontsize=8)
                label = (ql[r] if ql is not None else None) if j < 0 else (int(nl[r, j]) if nl is not None else None)
                if label is not None:
                    colour = "black"
                    if j >= 0 and ql is not None:
                        colour = "#2ca02c" if label == ql[r] else CORRECT_COLOUR
                    ax.set_xlabel(_class_name(label, class_names, 16), fontsize=7, color=colour, labelpad=2)
        return _save(fig, path, software=software)


# --------------------------------------------------------------------------- confusion matrix
def plot_confusion(matrix: np.ndarray | torch.Tensor, class_names: list[str], path: str | Path,
                   software: str = SOFTWARE) -> Path:
    """A confusion matrix (rows: true class, columns: predicted class) normalised per row, so each
    row shows where one class's images went; the title gives the overall top-1 error from the counts.
    Class names label the axes up to 30 classes; above that the axes show indices only.
    """
    m = _numpy(matrix, "matrix").astype(np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise UserError(f"matrix: expected a square confusion matrix, got shape {tuple(m.shape)}")
    n = m.shape[0]
    names = list(class_names or [])
    if names and len(names) != n:
        raise UserError(f"class_names: {len(names)} names for a {n}×{n} confusion matrix")
    m = np.nan_to_num(m)
    totals = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)  # an empty row stays 0
    total = m.sum()
    side = float(np.clip(2.5 + 0.28 * n, 4.5, 12.0))
    with _style():
        fig = _figure(side + 1.2, side)
        ax = fig.add_subplot()
        im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cbar.set_label("fraction of the true class")
        show_names = bool(names) and n <= 30
        if show_names:
            ticks = np.arange(n)
            short = [_class_name(i, names, 18) for i in range(n)]
            ax.set_xticks(ticks, short, rotation=60 if n > 6 else 0, ha="right" if n > 6 else "center",
                          rotation_mode="anchor", fontsize=8 if n <= 15 else 6)
            ax.set_yticks(ticks, short, fontsize=8 if n <= 15 else 6)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if n <= 12:  # few enough cells to print the fractions
            for i in range(n):
                for j in range(n):
                    if norm[i, j] >= 0.005:
                        ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        err = f" — top-1 error {100 * (1 - np.trace(m) / total):.2f}% on {int(round(total))} images" if total > 0 else ""
        ax.set_title(f"Confusion matrix{err}")
        return _save(fig, path, software=software)


# --------------------------------------------------------------------------- experiment plots
def plot_bars(
    rows: list[dict],
    x: str,
    y: str,
    path: str | Path,
    yerr: str | None = None,
    title: str | None = None,
    ylabel: str | None = None,
    reference: dict[str, float] | None = None,
) -> Path:
    """One bar per row: ``row[x]`` names it, ``row[y]`` is its height, ``row[yerr]`` an error bar
    (e.g. the standard deviation over seeds). A ``y`` ending in ``_err`` is a fraction shown in %,
    and so are its error bars and the ``reference`` values (label → value, drawn as dashed lines,
    e.g. the paper's number for the same comparison). A row without a value shows "n/a".
    """
    if not rows:
        raise UserError(f"rows: no rows to plot {y!r} against {x!r}")
    for i, r in enumerate(rows):
        if x not in r:
            raise UserError(f"rows[{i}]: no key {x!r}")
    pct = _is_fraction(y)
    scale = 100.0 if pct else 1.0
    labels = [str(r[x]) for r in rows]
    vals = [finite(r.get(y)) for r in rows]
    errs = [(finite(r.get(yerr)) or 0.0) * scale if yerr else 0.0 for r in rows]
    heights = [v * scale if v is not None else 0.0 for v in vals]
    long_labels = len(rows) > 6 or max(len(s) for s in labels) > 12
    with _style():
        fig = _figure(max(4.0, 0.75 * len(rows) + 2.0), 4.2)
        ax = fig.add_subplot()
        pos = np.arange(len(rows))
        ax.bar(pos, heights, color=[f"C{i % 10}" for i in range(len(rows))], alpha=0.85,
               yerr=errs if yerr else None, capsize=4 if yerr else 0, error_kw={"elinewidth": 1})
        top = max([h + e for h, e in zip(heights, errs)] + [0.0])
        for p_, v, h, e in zip(pos, vals, heights, errs):
            text = "n/a" if v is None else (f"{h:.2f}" + (f" ± {e:.2f}" if yerr and e else ""))
            ax.text(p_, h + e + 0.01 * (top or 1.0), text, ha="center", va="bottom", fontsize=7)
        for i, (name, value) in enumerate((reference or {}).items()):
            v = finite(value)
            if v is not None:
                ax.axhline(v * scale, linestyle="--", linewidth=1.2, color=f"C{(i + 3) % 10}", label=f"{name}: {v * scale:.2f}")
                top = max(top, v * scale)
        if reference:
            ax.legend(fontsize=8, loc="upper right")
        ax.set_xticks(pos, labels, rotation=30 if long_labels else 0, ha="right" if long_labels else "center",
                      rotation_mode="anchor")
        ax.set_ylim(0, top * 1.18 if top > 0 else 1.0)
        ax.set_ylabel(ylabel or (_pretty(y) + (" (%)" if pct else "")))
        ax.set_xlabel(_pretty(x))
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        if title:
            ax.set_title(title)
        return _save(fig, path)


# Each line of a line plot in its own colour and line style, so the plot reads in grey too.
_LINE_STYLES = ("-", "--", "-.", ":")


def _line_plot(
    series: Mapping[str, Sequence[tuple]],
    path: str | Path,
    draw: Callable[[Any, Sequence[tuple], dict[str, Any]], None],
    *,
    size: tuple[float, float],
    xlabel: str,
    ylabel: str,
    title: str | None,
    hline: float | None,
    hline_label: str,
    axes: Callable[[Any], None] | None = None,
    grid: str = "major",
) -> Path:
    """The set-up :func:`plot_series` and :func:`plot_scaling` share: one axes; ``draw(ax, points,
    style)`` for each series (``style``: its colour, line style, width and label); the dashed
    horizontal reference line; ``axes(ax)`` for the axis scales and ticks; labels, grid, legend
    (where a line has a label), title; the PNG."""
    if not series:
        raise UserError("series: nothing to plot")
    with _style():
        fig = _figure(*size)
        ax = fig.add_subplot()
        for i, (name, points) in enumerate(series.items()):
            draw(ax, points, {"linestyle": _LINE_STYLES[i % len(_LINE_STYLES)], "color": f"C{i % 10}", "linewidth": 1.6,
                              "label": str(name)})
        if hline is not None:
            ax.axhline(hline, color="0.4", linestyle="--", linewidth=1, label=hline_label)
        if axes is not None:
            axes(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which=grid, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        if title:
            ax.set_title(title)
        return _save(fig, path)


def plot_series(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    hline: float | None = None,
) -> Path:
    """Lines ``name → [(x, y), ...]``, each in its own colour and line style (solid, dashed, …, so the
    plot reads in grey too), with an optional dashed horizontal reference line. Figure 1 is
    ``{"ReLU": [(epoch, train_err)...], "tanh": [...]}`` with ``hline=0.25`` (the 25% threshold).
    Values are plotted as given.
    """

    def draw(ax: Any, points: Sequence[tuple], style: dict[str, Any]) -> None:
        pts = sorted((float(a), float(b)) for a, b in points if finite(a) is not None and finite(b) is not None)
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, **style, marker="o" if len(pts) <= 20 else None, markersize=3)

    return _line_plot(series, path, draw, size=(6.0, 4.2), xlabel=xlabel, ylabel=ylabel, title=title, hline=hline,
                      hline_label=f"{hline:g}" if hline is not None else "")


def plot_scaling(
    series: Mapping[str, Sequence[tuple[float, float, float | None]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    hline: float | None = None,
    hline_label: str = "chance",
) -> Path:
    """Lines ``name → [(x, mean, std), ...]`` on a logarithmic x axis, each with its spread (mean ± std,
    a shaded band; none where std is None), in its own colour and line style; values as given (e.g.
    error in %). An error-against-training-set-size plot is ``{"method": [(images, err, std), ...]}``."""

    def draw(ax: Any, points: Sequence[tuple], style: dict[str, Any]) -> None:
        pts = sorted((float(x), float(m), None if s is None or finite(s) is None else float(s))
                     for x, m, s in points if finite(x) is not None and finite(m) is not None and x > 0)
        if not pts:
            return
        ax.plot([p[0] for p in pts], [p[1] for p in pts], **style, marker="o", markersize=3)
        band = [(x, m, s) for x, m, s in pts if s is not None]
        if band:
            ax.fill_between([b[0] for b in band], [b[1] - b[2] for b in band], [b[1] + b[2] for b in band],
                            color=style["color"], alpha=0.18, linewidth=0)

    def log_x(ax: Any) -> None:
        ax.set_xscale("log")
        # Ticks at the sizes run, written out (500, 2,000, …), not as powers of ten.
        ticks = sorted({float(p[0]) for pts in series.values() for p in pts if finite(p[0]) is not None and p[0] > 0})
        ax.set_xticks(ticks, [f"{t:,.0f}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())

    return _line_plot(series, path, draw, size=(6.4, 4.4), xlabel=xlabel, ylabel=ylabel, title=title, hline=hline,
                      hline_label=f"{hline_label} ({hline:g})" if hline is not None else "", axes=log_x, grid="both")
