"""A short measured throughput of one network on this machine: the training step ``alexnet train``
runs (:func:`alexnet.perf.steps.make_step`: augmentation, forward, loss, backward, the paper's update)
and the evaluation forward, on random input, timed by the one timing helper. For an estimate (the
experiments' ``--plan``), not a benchmark result."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from alexnet import models
from alexnet.perf.steps import make_step, random_batch, random_stats
from alexnet.perf.timing import time_steps


def measure(model: str, options: Mapping[str, Any], batch: int, num_classes: int, *, budget_s: float = 2.0,
            device: torch.device | None = None) -> tuple[float, float]:
    """(training, evaluation) images per second of ``model`` with ``options`` at ``batch`` on
    ``device`` (default the CPU), each timed for about ``budget_s`` seconds after two warm-up steps."""
    device = device or torch.device("cpu")
    net = models.create(model, num_classes, **dict(options))
    size = models.info(model).input_size
    u8, labels, idx = random_batch(batch, size, num_classes, device)
    norm = models.input_norm(model, dict(options))
    step = make_step(net, device, stats=random_stats(u8), input_size=size, input_norm=norm, amp="none",
                     channels_last=False)
    train = time_steps(lambda: step(u8, labels, idx, 0), device, budget_s, warmup=2)
    x = step.prepare(u8, idx, 0)
    net.eval()

    @torch.no_grad()
    def forward() -> None:
        net(x)

    ev = time_steps(forward, device, budget_s / 2, warmup=1)
    return batch / train["s_per_step"], batch / ev["s_per_step"]


__all__ = ["measure"]
