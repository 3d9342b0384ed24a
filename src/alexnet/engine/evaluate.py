"""Evaluation: centre crop or §4.1's 10-crop average of the softmax; top-1 and top-5 error."""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.data.augment import Augment
from alexnet.data.format import PreparedDataset
from alexnet.data.stream import make_loader
from alexnet.engine import distributed
from alexnet.engine.checks import check_ten_crop
from alexnet.engine.device import AMP_DTYPES
from alexnet.progress import Progress


@dataclass
class Precision:
    """Where and how the network computes: device, autocast dtype, memory format."""

    device: torch.device
    amp: str = "none"
    channels_last: bool = False

    def autocast(self) -> ContextManager[object]:
        if self.amp == "none":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


def topk_hits(logits_or_probs: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many rows have the label among their k highest scores, for each k: an int64 tensor on
    the scores' device (nothing is read back: reading it is the caller's synchronisation)."""
    kmax = min(max(ks), logits_or_probs.shape[1])
    top = logits_or_probs.topk(kmax, dim=1).indices  # N×kmax
    hit = top == labels[:, None]
    return torch.stack([hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


def topk_correct(logits_or_probs: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows have the label among their k highest scores, for each k (read to the host)."""
    return [int(c) for c in topk_hits(logits_or_probs, labels, ks).tolist()]


def per_class_summary(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    """Top-1/top-5 error, each class's top-1 error and count, and the confusion matrix (``_confusion``,
    rows: true class) of scores ``probs`` (N×C) against ``labels``."""
    n = len(labels)
    c1, c5 = topk_correct(probs, labels)
    pred = probs.argmax(1)
    k = probs.shape[1]
    conf = torch.zeros(k, k, dtype=torch.long)
    conf.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = []
    for c in range(k):
        tot = int(conf[c].sum())
        per_class.append({"class": class_names[c] if c < len(class_names) else str(c), "n": tot,
                          "top1_err": (1 - int(conf[c, c]) / tot) if tot else None})
    return {"top1_err": 1 - c1 / max(1, n), "top5_err": 1 - c5 / max(1, n), "per_class": per_class, "_confusion": conf.numpy()}


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, augment: Augment, prec: Precision, ten_crop: bool) -> torch.Tensor:
    """Softmax probabilities (float32, N×C) for a uint8 batch: centre crop, or the mean of the
    softmax over the 10 crops (§4.1)."""
    if ten_crop:
        check_ten_crop(images.shape[-2:], augment.crop)
    images = images.to(prec.device, non_blocking=True)
    with prec.autocast():
        if ten_crop:
            views = augment.ten_crop(images)  # 10×N×3×S×S
            n = images.shape[0]
            x = prec.prepare_input(views.flatten(0, 1))  # (10·N)×3×S×S
            probs = F.softmax(model(x).float(), dim=1).view(10, n, -1).mean(0)
        else:
            probs = F.softmax(model(prec.prepare_input(augment.center(images))).float(), dim=1)
    return probs


@dataclass(frozen=True)
class EvalResult:
    """One pass over a split: images counted, top-1/top-5 error, mean loss; with
    ``return_probs``, every image's softmax (N×C, float32, in the split's order)."""

    n: int
    top1_err: float
    top5_err: float
    loss: float
    probs: torch.Tensor | None = None
    subset: "EvalResult | None" = None  # the same over the ``subset`` images alone

    def metrics(self) -> dict[str, float | int]:
        """The numbers, as RUN/eval.json and ``alexnet evaluate --json`` store them."""
        return {"n": self.n, "top1_err": self.top1_err, "top5_err": self.top5_err, "loss": self.loss}


def selection_half(labels: Any) -> np.ndarray:
    """A boolean mask over validation images: within each class, every other image (in stored
    order) belongs to the selection half, the rest to the report half. Class-balanced and
    deterministic, whatever the order of the classes in the split."""
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        mask[idx[0::2]] = True
    return mask


@torch.no_grad()
def evaluate(
    model: nn.Module,
    ds: PreparedDataset,
    augment: Augment,
    prec: Precision,
    *,
    batch_size: int = 256,
    ten_crop: bool = False,
    workers: int = -1,
    rank: int = 0,
    world_size: int = 1,
    return_probs: bool = False,
    progress: bool = False,
    subset: np.ndarray | None = None,
) -> EvalResult:
    """Top-1/top-5 error and loss over the whole split, each image counted exactly once (across
    processes too: contiguous unpadded shards, sums all-reduced). ``progress``: a bar on a
    terminal, a periodic line elsewhere (:class:`alexnet.progress.Progress`), from rank 0.
    ``subset``: a boolean mask over the split; also counted over those images alone
    (``EvalResult.subset``)."""
    was_training = model.training
    model.eval()
    loader = make_loader(ds, batch_size * world_size, shuffle=False, workers=workers, rank=rank, world_size=world_size,
                         pin_memory=prec.device.type == "cuda")
    # n, top-1 hits, top-5 hits, loss sum (and the same over ``subset``): accumulated on the device
    # and read once at the end (a read per batch would make the host wait for the GPU at every batch).
    sums = torch.zeros(4, dtype=torch.float64, device=prec.device)
    sub_sums = torch.zeros(4, dtype=torch.float64, device=prec.device)
    mask = torch.as_tensor(np.asarray(subset, dtype=bool)).to(prec.device) if subset is not None else None
    all_probs = []
    bar = Progress(len(loader), "evaluate" + (" (10-crop)" if ten_crop else ""), "batch", enabled=progress and rank == 0,
                   leave=False)
    try:
        for b in loader:
            probs = predict_probs(model, b.images, augment, prec, ten_crop)
            labels = b.labels.to(probs.device, non_blocking=True)  # page-locked by the loader on a GPU
            nll = F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels, reduction="sum")
            sums[0] += len(labels)
            sums[1:3] += topk_hits(probs, labels)
            sums[3] += nll
            if mask is not None:  # weights, not boolean indexing: no data-dependent shape, no read
                m = mask[b.indices.to(prec.device, non_blocking=True)]
                w = m.to(torch.float64)
                sub_sums[0] += w.sum()
                sub_sums[1:3] += (_row_hits(probs, labels) * w[:, None]).sum(0)
                sub_sums[3] += (F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels, reduction="none").double() * w).sum()
            if return_probs:
                all_probs.append(probs)  # on the device: one copy to the host after the pass
            bar.update(1)
    finally:
        loader.close()  # its workers and buffers: this loader serves this one pass
    bar.close()
    if world_size > 1:
        sums = distributed.all_reduce_sum(sums)
        if mask is not None:
            sub_sums = distributed.all_reduce_sum(sub_sums)
    sums, sub_sums = torch.stack([sums, sub_sums]).cpu() if mask is not None else (sums.cpu(), None)  # the one read
    model.train(was_training)
    probs = (torch.cat(all_probs).cpu() if all_probs else torch.zeros(0)) if return_probs else None
    result = _result(sums, probs)
    return dataclasses.replace(result, subset=_result(sub_sums, None)) if mask is not None else result


def _row_hits(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """N×2 float64: whether each row has its label among its 1 and 5 highest scores."""
    kmax = min(5, probs.shape[1])
    hit = probs.topk(kmax, dim=1).indices == labels[:, None]
    return torch.stack([hit[:, :1].any(1), hit.any(1)], dim=1).to(torch.float64)


def _result(sums: torch.Tensor, probs: torch.Tensor | None) -> EvalResult:
    n = max(1.0, float(sums[0]))
    return EvalResult(n=int(sums[0]), top1_err=1 - float(sums[1]) / n, top5_err=1 - float(sums[2]) / n,
                      loss=float(sums[3]) / n, probs=probs)
