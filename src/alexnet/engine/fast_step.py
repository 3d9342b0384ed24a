"""The training step (``alexnet train`` and ``benchmarks/gpu.py`` both use it): augmentation on the
device, bf16 + channels_last, model and loss under ``torch.compile``, the paper's update rule (§5) as
one fused kernel per parameter, optional CUDA graphs.

What it does beyond the plain augment → forward → loss → backward → ``optimizer.step()``, and why:

* **Augmentation straight to the compute dtype.** :meth:`Augment.train` writes bf16 when autocast is
  bf16: the first convolution casts its input to bf16 under autocast anyway, so the numbers the network
  sees are identical. On the GPU the crop's pixels are gathered as uint8 and the mean image at those
  pixels in fp32 (one fp32 N×3×224×224 intermediate, 154 MB at batch 256, on which the subtraction,
  colour noise and scale run in place); the network's input is written once, in bf16. Eager, that is
  one fp32 tensor fewer than fp32 arithmetic followed by a cast, with the same bits.
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
* **No host synchronisation.** Nothing in the step reads a device value or copies from pageable
  memory: the batch, labels and indices come page-locked from the loader and are copied with
  ``non_blocking``; the loss and hits are returned as device tensors; the learning rate reaches the
  fused update as a device tensor filled in place. (fp16 with a ``GradScaler`` is the exception: the
  scaler reads whether the gradients are finite at every step.)
* **CUDA graphs** (``cuda_graphs=True``): the compiled forward/backward is captured and replayed
  (``mode="reduce-overhead"``), which removes the kernel-launch gaps. At batch 256 a step is ~10 ms of
  GPU work against ~1 ms of launches, so the gain is small; it matters for small per-GPU batches.

Any other optimizer (``torch.optim.SGD`` for the torchvision recipe) keeps its own ``step()``; fp16
with a ``GradScaler`` keeps ``scaler.step(optimizer)`` (the scaler must see the unscaled gradients).

The fused update itself (:class:`~alexnet.engine.optim.FusedPaperSGD`) lives beside ``PaperSGD`` in
:mod:`alexnet.engine.optim`.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.data.augment import Augment
from alexnet.engine.device import amp_dtype
from alexnet.engine.optim import FusedPaperSGD, PaperSGD


# ---------------------------------------------------------------------------------------------------
# The step


def _forward_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: torch.dtype | None, device_type: str, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of the batch (fp32 logits) and its number of top-1 hits."""
    with torch.autocast(device_type, dtype=amp) if amp is not None else nullcontext():
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
        self.amp = amp_dtype(amp)
        self.device = torch.device(device)
        if cuda_graphs and (not compile or self.device.type != "cuda"):
            raise ValueError("cuda_graphs needs compile=True and a CUDA device")
        self.model = model
        self.optimizer = optimizer
        self.augment = augment
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


__all__ = ["FastStep"]
