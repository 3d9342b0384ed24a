"""What a CPU can do for a network, measured where the network runs: the fp32 rate of a large matmul,
of each convolution layer at its own shapes (forward and backward), and a plain PyTorch training loop
of the same network on in-memory data — the references a training step's img/s is read against."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import conv_flop_count

from alexnet.perf.timing import time_calls

CPU = torch.device("cpu")


def gemm_gflops(n: int = 2048, *, repeats: int = 5, iters: int = 3) -> dict[str, Any]:
    """fp32 GFLOP/s of an n×n by n×n matmul (2n³ FLOPs): the best of ``repeats`` means of ``iters``
    calls (the ceiling is what the machine reaches, not its average under other load)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    s = time_calls(lambda: torch.mm(a, b), CPU, iters=iters, repeats=repeats, warmup=1)
    return {"n": n, "gflop_per_s": round(2 * n**3 / min(s) / 1e9, 1), "ms": round(min(s) * 1e3, 3)}


def conv_shapes(build: Callable[[], nn.Module], batch: int, size: int, channels: int = 3) -> list[tuple[nn.Conv2d, tuple[int, ...]]]:
    """Each ``nn.Conv2d`` of ``build()`` with the shape of its input for a batch of ``batch`` images of
    ``size``² (the model built and run on the meta device: no data, no time)."""
    shapes: list[tuple[nn.Conv2d, tuple[int, ...]]] = []
    with torch.device("meta"), torch.no_grad():
        model = build()
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_pre_hook(lambda m, a: shapes.append((m, tuple(a[0].shape))))
        model(torch.empty(batch, channels, size, size))
    return shapes


def conv_layer_rates(build: Callable[[], nn.Module], batch: int, size: int, *, channels_last: bool,
                     repeats: int = 5, iters: int = 3, clock: Callable[[], float] = time.perf_counter) -> list[dict[str, Any]]:
    """Forward + backward GFLOP/s of each convolution of ``build()`` at its own shapes (random data,
    ``F.conv2d`` and autograd as in training: the first layer computes no input gradient, as the
    images need none), best of ``repeats``, timed by ``clock`` (see ``time_calls``)."""
    rows = []
    for i, (conv, shape) in enumerate(conv_shapes(build, batch, size)):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        g = torch.Generator().manual_seed(i)
        x = torch.randn(shape, generator=g).contiguous(memory_format=fmt).requires_grad_(i > 0)
        w = torch.randn(conv.weight.shape, generator=g).contiguous(memory_format=fmt).requires_grad_()
        b = torch.zeros(conv.out_channels, requires_grad=True)
        args = (conv.stride, conv.padding, conv.dilation, conv.groups)
        out_shape = F.conv2d(x.detach()[:1], w.detach(), None, *args).shape
        gy = torch.randn((batch, *out_shape[1:]), generator=g).contiguous(memory_format=fmt)

        def step() -> None:
            F.conv2d(x, w, b, *args).backward(gy)

        fwd = conv_flop_count(list(x.shape), list(w.shape), [batch, *out_shape[1:]], False)
        flops = fwd * (3 if i > 0 else 2)  # forward, weight gradient, input gradient (not for the images)
        s = min(time_calls(step, CPU, iters=iters, repeats=repeats, warmup=1, clock=clock))
        rows.append({"layer": f"conv{i + 1}", "input": list(shape), "weight": list(w.shape), "channels_last": channels_last,
                     "gflop_fwd_bwd": round(flops / 1e9, 4), "ms": round(s * 1e3, 3), "gflop_per_s": round(flops / s / 1e9, 1)})
    return rows


def plain_loop(build: Callable[[], nn.Module], batch: int, size: int, num_classes: int, *, steps: int,
               rounds: int = 3, warmup: int = 3, lr: float = 1e-3) -> dict[str, Any]:
    """img/s of the textbook PyTorch training loop of ``build()``: in-memory float batches (random
    images, no augmentation, no loader), the default memory format, ``torch.optim.SGD`` (momentum 0.9,
    weight decay 5e-4), ``zero_grad`` → forward → cross-entropy → ``backward`` → ``step``. The median of
    ``rounds`` rounds of ``steps`` steps."""
    torch.manual_seed(0)
    model = build().train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    n_batches = 8
    xs = torch.randn(n_batches, batch, 3, size, size, generator=g)
    ys = torch.randint(0, num_classes, (n_batches, batch), generator=g)
    i = 0

    def step() -> None:
        nonlocal i
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xs[i % n_batches]), ys[i % n_batches])
        loss.backward()
        opt.step()
        i += 1

    samples = time_calls(step, CPU, iters=steps, repeats=rounds, warmup=warmup)
    return {"batch": batch, "steps_per_round": steps, "img_per_s": round(batch / statistics.median(samples), 1),
            "img_per_s_rounds": [round(batch / s, 1) for s in samples]}


def fraction(img_per_s: float, flops_per_img: float, gflop_per_s: float) -> float:
    """The share of a measured rate (GFLOP/s) that ``img_per_s`` images of ``flops_per_img`` FLOPs use."""
    return round(img_per_s * flops_per_img / 1e9 / gflop_per_s, 4)


__all__ = ["conv_layer_rates", "conv_shapes", "fraction", "gemm_gflops", "plain_loop"]
