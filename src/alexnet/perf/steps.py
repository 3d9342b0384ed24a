"""The training step on random data: :class:`~alexnet.engine.fast_step.FastStep`, the step
``alexnet train`` runs (augmentation on the device, forward, loss, backward, update), built for a
benchmark. Our models train with the paper's update (``PaperSGD``); torchvision's AlexNet with
``torch.optim.SGD`` as in torchvision's reference recipe. :func:`step_throughput` times it
(``alexnet bench model``); :func:`lrn_share` is LRN's share of it, from the step with and without LRN."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from alexnet import models
from alexnet.data.augment import Augment
from alexnet.engine.fast_step import FastStep
from alexnet.engine.optim import PaperSGD
from alexnet.errors import UserError
from alexnet.perf.timing import time_calls

# The learning rate of every timed step. Its value does not change the work; the paper's 0.01 makes
# random-label runs diverge within a few steps, and the benchmarks report the loss they end at.
LR = 1e-3


def random_batch(batch: int, image_size: int, num_classes: int, device: torch.device,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A uint8 batch (N×3×S×S) and labels on ``device``, and the samples' indices on the CPU (as the
    loader delivers them: page-locked for a GPU, so that the step's copy of them does not wait)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    u8 = torch.randint(0, 256, (batch, 3, image_size, image_size), generator=gen, dtype=torch.uint8).to(device)
    labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    indices = torch.arange(batch)
    return u8, labels, indices.pin_memory() if torch.device(device).type == "cuda" else indices


def random_stats(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Augmentation statistics (§2 mean image, §4.1 RGB PCA) of a uint8 batch."""
    x = images.float()
    mean = x.mean(0).cpu()  # 3×H×W, 0–255
    px = (x / 255.0).permute(1, 0, 2, 3).reshape(3, -1).double()  # 3×(N·H·W)
    eigval, eigvec = torch.linalg.eigh(torch.cov(px).cpu())
    return {"mean": mean, "eigval": eigval.flip(0).float(), "eigvec": eigvec.flip(1).float()}


def optimizer_label(step: FastStep) -> str:
    """What updates the weights in ``step``, as it runs."""
    if not isinstance(step.optimizer, PaperSGD):
        cls = type(step.optimizer)
        name = f"torch.optim.{cls.__name__}" if cls.__module__.startswith("torch.optim") else cls.__name__
        return name + " (" + ("foreach" if step.device.type == "cuda" else "for-loop") + ")"
    if step.fused is None:
        return "PaperSGD §5 (foreach)"
    return "PaperSGD §5 (fused per parameter, " + ("compiled" if step.compiled else "uncompiled: a loop of small kernels") + ")"


def make_step(model: nn.Module, device: torch.device, *, ours: bool = True, stats: dict[str, torch.Tensor] | None = None,
              input_size: int = 224, input_norm: str = "mean_image", amp: str = "bf16", channels_last: bool = True,
              compile: bool = False, cuda_graphs: bool = False, compile_backend: str = "inductor",
              fused_optimizer: bool | None = None, lr: float = LR) -> FastStep:
    """A FastStep training ``model`` (moved to ``device``; channels_last when asked): the paper's
    update for ours (one fused kernel per parameter when compiled, PaperSGD's foreach passes
    otherwise), torchvision's recipe (momentum 0.9, weight decay 1e-4) for theirs; the §4.1
    augmentation from ``stats`` (None: the input is fed as it is, already float and cropped).
    ``fused_optimizer`` overrides that choice (``alexnet train`` makes the same one: fused where compiled)."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt: torch.optim.Optimizer
    if ours:
        opt = PaperSGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    aug = Augment.from_stats(stats, input_size, input_norm=input_norm, seed=0) if stats is not None else None
    # Uncompiled, the fused update is a Python loop of small kernels per parameter: PaperSGD's foreach
    # passes are faster, so the eager step uses them.
    return FastStep(model, opt, aug, device, amp=amp, channels_last=channels_last, compile=compile,
                    cuda_graphs=cuda_graphs, fused_optimizer=compile if fused_optimizer is None else fused_optimizer,
                    compile_backend=compile_backend)


def step_throughput(model: str, device: torch.device, *, batch_size: int = 256, num_classes: int = 1000,
                    amp: str = "none", channels_last: bool = False, compile: bool = False, steps: int = 20,
                    warmup: int = 3) -> dict[str, Any]:
    """The training step of ``alexnet train`` (FastStep: the same update, augmentation, autocast,
    layout and compilation) on a random uint8 batch on ``device``: one row with ``img_per_s``."""
    models.check_name(model)
    if steps < 1 or warmup < 0:
        raise UserError("--steps must be at least 1 and --warmup at least 0")
    mi = models.info(model)
    # The prepared images are 256×256 for the 224 input (§2); 4 pixels of padding for the small nets.
    stored = 256 if mi.input_size == 224 else mi.input_size + 4
    u8, labels, idx = random_batch(batch_size, stored, num_classes, device)
    torch.manual_seed(0)
    step = make_step(models.create(model, num_classes), device, stats=random_stats(u8), input_size=mi.input_size,
                     input_norm=mi.input_norm, amp=amp, channels_last=channels_last, compile=compile,
                     fused_optimizer=device.type == "cuda", lr=0.01)
    epoch = [0]

    def one() -> None:
        epoch[0] += 1  # new crops, flips and colour noise every step
        step(u8, labels, idx, epoch[0])

    s = time_calls(one, device, iters=steps, repeats=1, warmup=warmup)[0]
    return {"model": model, "device": str(device), "batch_size": batch_size, "amp": amp,
            "channels_last": channels_last, "compile": compile, "steps": steps,
            "step": "FastStep (alexnet train's step: augmentation on the device, forward, loss, backward, update)",
            "optimizer": optimizer_label(step), "img_per_s": round(batch_size / s, 1)}


def lrn_share(s_with_lrn: float, s_without_lrn: float) -> float:
    """LRN's share of a step: 1 - t(lrn="none") / t(with LRN), from the times of the same step of the
    paper net without and with its LRN layers (§3.3), to 4 decimals. From rates: t ∝ 1 / img/s."""
    return round(1.0 - s_without_lrn / s_with_lrn, 4)


__all__ = ["LR", "lrn_share", "make_step", "optimizer_label", "random_batch", "random_stats", "step_throughput"]
