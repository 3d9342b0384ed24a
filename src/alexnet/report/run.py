"""A finished run's figures: curves, first-layer filters (Figure 3), predictions (Figure 4 left),
confusion matrix; then its report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet.data.format import PreparedDataset
from alexnet.data.resolve import resolve_data
from alexnet.engine.evaluate import Precision, evaluate, per_class_summary
from alexnet.engine.inference import augment_for, load
from alexnet.engine import run_folder
from alexnet.report.figures import plot_confusion, plot_curves, plot_filters, plot_predictions
from alexnet.report.markdown import write_run_report


def first_conv(model: nn.Module) -> nn.Conv2d:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ValueError("model has no convolution")


def draw_filters(model: nn.Module, path: Path, channel_order: str = "rgb", **kw: Any) -> Path:
    # §3.2 / Figure 3: with two towers the first layer's kernels split 48 + 48 over the GPUs.
    w = first_conv(model).weight.detach().float().cpu()
    if channel_order == "bgr":  # Caffe's kernels read B, G, R: shown in RGB like every other network's
        w = w.flip(1)
    return plot_filters(w, path, towers=int(getattr(model, "towers", 1)), **kw)


def make_run_figures(run: Path, *, data: str | None = None, device: str = "cpu", n_predictions: int = 8) -> list[Path]:
    """Draw what the run folder supports: curves from metrics.jsonl; filters, predictions and the
    confusion matrix from the weights and the validation split."""
    made: list[Path] = []
    metrics = run_folder.read_metrics(run)
    if metrics:
        made.append(plot_curves(metrics, run / "curves.png"))
    if not (run / "model.safetensors").is_file():
        return made
    trained = load(run, device)
    made.append(draw_filters(trained.model, run / "filters.png", trained.meta.get("channel_order", "rgb")))
    spec = data or trained.meta.get("data")
    if not spec:
        return made
    ds = PreparedDataset(resolve_data(spec, trained.meta["input_size"]), "val")
    aug = augment_for(trained, ds)
    prec = Precision(torch.device(device))
    probs = evaluate(trained.model, ds, aug, prec, return_probs=True).probs
    assert probs is not None
    labels = torch.from_numpy(ds.labels).long()
    summary = per_class_summary(probs, labels, ds.class_names)
    made.append(plot_confusion(summary["_confusion"], ds.class_names, run / "confusion.png"))
    pick = prediction_samples(ds.labels, n_predictions)
    imgs = ds.read_batch(pick)
    made.append(plot_predictions(imgs, probs[pick], labels[pick].tolist(), ds.class_names, run / "predictions.png"))
    return made


def prediction_samples(labels: np.ndarray, n: int) -> list[int]:
    """Figure 4 left: ``n`` val images of as many different classes as possible (classes evenly
    spaced over the label range, the first image of each), deterministically."""
    classes = np.unique(labels)
    chosen = classes[np.linspace(0, len(classes) - 1, min(n, len(classes))).round().astype(int)]
    pick = [int(np.flatnonzero(labels == c)[0]) for c in chosen]
    taken = set(pick)
    rest = [i for i in range(len(labels)) if i not in taken]
    return pick + rest[: n - len(pick)]


def regenerate(run: Path, *, data: str | None = None, device: str = "cpu") -> Path:
    make_run_figures(run, data=data, device=device)
    return write_run_report(run)
