"""The training step (``alexnet train`` and ``benchmarks/gpu.py`` both use it): augmentation on the
device, bf16 + channels_last, model and loss under ``torch.compile``, the paper's update rule (§5) as
one fused kernel per parameter, optional CUDA graphs.

What it does beyond the plain augment → forward → loss → backward → ``optimizer.step()``, and why:

* **Augmentation straight to the compute dtype.** :meth:`Augment.train` writes bf16 when autocast is
  bf16: the first convolution casts its input to bf16 under autocast anyway, so the numbers the network
  sees are identical and the fp32 N×3×224×224 intermediate (154 MB at batch 256) is never written.
* **Model + loss + top-1 hits compiled as one function.** Inductor fuses the ReLUs, the (plain) LRN,
  dropout, the fp32 cast of the logits and the cross-entropy into neighbouring kernels, in the forward
  and the backward. The fused Triton LRN (``alexnet.models.lrn_fast``) is a custom op, opaque to the
  compiler, so it is traced without a graph break.
* **The paper's update, fused.** §5: ``v <- 0.9 v - 0.0005 eps w - eps dL/dw ; w <- w + v``.
  :class:`~alexnet.engine.optim.PaperSGD` runs it as four foreach passes over the 61M parameters
  (read/write v, then v and w, then v and g, then w and v: 11 tensor passes, ~2.7 GB per step in fp32).
  Compiled, the same arithmetic on each parameter is one kernel reading w, g, v and writing w, v (5
  passes, ~1.2 GB): ~0.5 ms saved per step on an H100 (3 TB/s). The learning rate is a 0-d device
  tensor, so the schedule can change it every step without a recompilation; the state stays the
  optimizer's own (``state[p]["velocity"]``), so checkpoints are unchanged. The rule is the paper's
  exactly; only fp32 rounding may differ in the last bit (contraction into FMAs).
* **CUDA graphs** (``cuda_graphs=True``): the compiled forward/backward is captured and replayed
  (``mode="reduce-overhead"``), which removes the kernel-launch gaps. At batch 256 a step is ~10 ms of
  GPU work against ~1 ms of launches, so the gain is small; it matters for small per-GPU batches.

Any other optimizer (``torch.optim.SGD`` for the torchvision recipe) keeps its own ``step()``; fp16
with a ``GradScaler`` keeps ``scaler.step(optimizer)`` (the scaler must see the unscaled gradients).

``two_tower_convs(model)`` optionally replaces the grouped convolutions of the paper's towers (§3.2:
conv2, conv4, conv5 see only their own tower) by two convolutions on channel halves, with the same
parameters (state_dict unchanged): cuDNN's grouped kernels are slower than plain ones in some layouts;
``benchmarks/gpu.py`` measures both.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.data.augment import Augment

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------------
# The paper's update rule (§5), written per parameter so that Inductor fuses each one into a kernel.


def paper_sgd_update(
    params: list[torch.Tensor], grads: list[torch.Tensor], vels: list[torch.Tensor], lr: torch.Tensor,
    momentum: float, weight_decay: float,
) -> None:
    """``v <- momentum v - weight_decay lr w - lr g ; w <- w + v`` in place, for each parameter.

    The same operations, in the same order, as :meth:`PaperSGD.step` (which uses foreach ops);
    ``lr`` is a 0-d tensor on the parameters' device."""
    for p, g, v in zip(params, grads, vels):
        v.mul_(momentum)  # 0.9 v
        if weight_decay:
            v.add_(p * (lr * -weight_decay))  # - 0.0005 eps w
        v.add_(g * -lr)  # - eps dL/dw
        p.add_(v)  # w <- w + v


class FusedPaperSGD:
    """Runs a :class:`PaperSGD`'s step with :func:`paper_sgd_update` (compiled when ``compile``).

    Reads ``lr``/``momentum``/``weight_decay`` from the optimizer's param groups at every call (so
    ``set_lr`` and schedules keep working) and uses the optimizer's own velocities
    (:meth:`PaperSGD.velocities`), so checkpoints are the same either way."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, compile: bool = False, backend: str = "inductor") -> None:
        self.optimizer = optimizer
        self.update: Callable[..., None] = (
            torch.compile(paper_sgd_update, backend=backend, fullgraph=True) if compile else paper_sgd_update
        )
        self._lr: dict[tuple[int, torch.device], tuple[float, torch.Tensor]] = {}

    def _lr_tensor(self, gi: int, lr: float, device: torch.device) -> torch.Tensor:
        key = (gi, device)
        cached = self._lr.get(key)
        if cached is None:
            t = torch.tensor(lr, dtype=torch.float32, device=device)
            self._lr[key] = (lr, t)
            return t
        old, t = cached
        if old != lr:
            t.fill_(lr)  # a kernel on the stream: no host-device synchronisation
            self._lr[key] = (lr, t)
        return t

    @torch.no_grad()
    def step(self) -> None:
        opt = self.optimizer
        for gi, group in enumerate(opt.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            by_device: dict[torch.device, list[torch.Tensor]] = {}
            for p in params:  # one call per device (the two towers of model_parallel=2 live on two)
                by_device.setdefault(p.device, []).append(p)
            for device, ps in by_device.items():
                vels = opt.velocities(ps)  # type: ignore[attr-defined]  # a PaperSGD's own state
                lr = self._lr_tensor(gi, float(group["lr"]), device)
                self.update(ps, [p.grad for p in ps], vels, lr, float(group["momentum"]), float(group["weight_decay"]))


# ---------------------------------------------------------------------------------------------------
# The step


def _forward_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: torch.dtype | None, device_type: str, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of the batch (fp32 logits) and its number of top-1 hits."""
    with torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    hits = (logits.detach().argmax(1) == y).sum()
    return loss, hits


class FastStep:
    """One training step: ``loss, hits = step(images, labels, indices, epoch)``.

    ``images``: uint8 N×3×H×W (CPU, page-locked or not, or already on ``device``); ``indices``: the
    samples' dataset positions (the augmentation's key, §4.1); returns the batch's mean loss and
    top-1 hits as device tensors (reading them synchronises; the caller decides when).

    ``model`` is the plain module (or a DDP wrapper), not a ``torch.compile`` result: with
    ``compile=True`` the step compiles model + loss itself. ``augment=None`` feeds ``images`` to the
    model as they are (already float, cropped): for benchmarks on random input.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        augment: Augment | None,
        device: torch.device | str,
        *,
        amp: str = "bf16",
        channels_last: bool = True,
        compile: bool = False,
        cuda_graphs: bool = False,
        fused_optimizer: bool = True,
        compile_backend: str = "inductor",
        label_smoothing: float = 0.0,
        scaler: Any = None,
    ) -> None:
        from alexnet.engine.optim import PaperSGD  # late: optim pulls in the config module

        if amp not in AMP_DTYPES:
            raise ValueError(f"amp {amp!r}: accepted: {', '.join(AMP_DTYPES)}")
        self.device = torch.device(device)
        if cuda_graphs and (not compile or self.device.type != "cuda"):
            raise ValueError("cuda_graphs needs compile=True and a CUDA device")
        self.model = model
        self.optimizer = optimizer
        self.augment = augment
        self.amp = AMP_DTYPES[amp]
        # An fp16 autocast keeps fp32 input (fp16's range is not the issue; the first conv casts anyway,
        # but fp16 steps go through a GradScaler and are not this step's fast path).
        self.input_dtype = torch.bfloat16 if self.amp is torch.bfloat16 else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.label_smoothing = float(label_smoothing)
        self.scaler = scaler
        self.cuda_graphs = cuda_graphs
        self.compiled = compile
        if compile:
            mode = "reduce-overhead" if cuda_graphs else None
            self._fwd: Callable[..., tuple[torch.Tensor, torch.Tensor]] = torch.compile(
                _forward_loss, backend=compile_backend, mode=mode)
        else:
            self._fwd = _forward_loss
        self.fused: FusedPaperSGD | None = None
        if fused_optimizer and scaler is None and isinstance(optimizer, PaperSGD):
            self.fused = FusedPaperSGD(optimizer, compile=compile, backend=compile_backend)

    def prepare(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """The network's input for a uint8 batch: §4.1's augmentation on the device, in the compute
        dtype and memory format."""
        x = images.to(self.device, non_blocking=True)
        if self.augment is not None:
            x = self.augment.train(x, indices, epoch, dtype=self.input_dtype)  # N×3×S×S
        return x.contiguous(memory_format=self.memory_format)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prepare(images, indices, epoch)
        y = labels.to(self.device, non_blocking=True)
        # Before the forward: the last step's gradients are dropped before a graph replay could reuse
        # their memory.
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous replay's outputs are consumed
        loss, hits = self._fwd(self.model, x, y, self.amp, self.device.type, self.label_smoothing)
        # What the caller gets: copies when a later replay would overwrite the graph's own outputs.
        out = (loss.detach().clone(), hits.clone()) if self.cuda_graphs else (loss.detach(), hits)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.fused is not None:
                self.fused.step()
            else:
                self.optimizer.step()
        return out


# ---------------------------------------------------------------------------------------------------
# Two towers as two convolutions (§3.2)


class TwoTowerConv2d(nn.Conv2d):
    """A grouped convolution computed as one plain convolution per group on its channel slice,
    concatenated. Same ``weight`` (C_out × C_in/groups × k × k) and ``bias`` as the grouped layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        cin, cout = self.in_channels // g, self.out_channels // g
        outs = []
        for t in range(g):
            w = self.weight[t * cout : (t + 1) * cout]
            b = self.bias[t * cout : (t + 1) * cout] if self.bias is not None else None
            outs.append(F.conv2d(x[:, t * cin : (t + 1) * cin], w, b, self.stride, self.padding, self.dilation, 1))
        return torch.cat(outs, dim=1)  # N×C_out×H×W, tower 0's channels first as in the grouped layer


def two_tower_convs(model: nn.Module) -> nn.Module:
    """Replace every grouped ``nn.Conv2d`` (groups > 1) of ``model`` in place by a
    :class:`TwoTowerConv2d` sharing its parameters; the state_dict keys and shapes are unchanged."""
    for name, mod in list(model.named_children()):
        if type(mod) is nn.Conv2d and mod.groups > 1:
            new = TwoTowerConv2d.__new__(TwoTowerConv2d)
            new.__dict__.update(mod.__dict__)  # the same Parameter objects, hooks and attributes
            setattr(model, name, new)
        else:
            two_tower_convs(mod)
    return model


__all__ = ["FastStep", "FusedPaperSGD", "TwoTowerConv2d", "paper_sgd_update", "two_tower_convs"]
