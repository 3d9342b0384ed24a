"""The paper's two-GPU model parallelism (§3.2, Figure 2): ``alexnet train --model-parallel 2``.

The 2012 network did not fit one 3 GB GTX 580, so the authors put half of the kernels (one
"tower") on each GPU and let the GPUs communicate only in certain layers: "the kernels of layer 3
take input from all kernel maps in layer 2. However, kernels in layer 4 take input only from those
kernel maps in layer 4 [sic: 3] which reside on the same GPU" (§3.2). On one device the same
network is the grouped model of :mod:`alexnet.models.alexnet` (``groups=2`` in conv2, conv4,
conv5). :class:`ModelParallelAlexNet` takes such a grouped model apart and places it like this::

    device 0 (tower 1)                               device 1 (tower 2)
    image ──────────────────────────────────────────── image (copied to both)
    conv1 kernels 0–47    → ReLU → LRN* → pool       conv1 kernels 48–95   → ReLU → LRN* → pool
    conv2 0–127 (own 48)  → ReLU → LRN* → pool       conv2 128–255 (own 48)→ ReLU → LRN* → pool
               ╲__________________ crossing 1: both towers' conv2 maps ___________________╱
    conv3 0–191 (all 256) → ReLU                     conv3 192–383 (all 256) → ReLU
    conv4 0–191 (own 192) → ReLU                     conv4 192–383 (own 192) → ReLU
    conv5 0–127 (own 192) → ReLU → pool              conv5 128–255 (own 192) → ReLU → pool
               ╲__________________ crossing 2: both towers' pool5 vectors _________________╱
    fc6 units 0–2047 (all 9216) → ReLU → dropout     fc6 units 2048–4095 (all 9216) → ReLU → dropout
               ╲__________________ crossing 3: both halves of fc6 _________________________╱
    fc7 units 0–2047 (all 4096) → ReLU → dropout     fc7 units 2048–4095 (all 4096) → ReLU → dropout
               ╲__________________ crossing 4: both halves of fc7, to device 0 ____________╱
    fc8 (all 4096 → classes) on device 0; the logits and the loss live on device 0.

Crossings are explicit ``.to(device)`` copies; autograd sends the gradients back the same way.

\\* LRN: §3.3 normalises over the n = 5 adjacent kernel maps "at the same spatial position". The
grouped single-device model in this package normalises across all 96 (256) maps, so its two
boundary maps on each side see maps of the other tower. To stay numerically equal to it, each
tower receives a 2-map halo from the other before its LRN (``lrn_halo=True``, the default: a copy
of 2/48 of layer 1's and 2/128 of layer 2's maps). A grouped model built with the model option
``lrn_halo=False`` normalises each tower's maps among themselves, as two separate GPUs would; its
split then exchanges no halo and stays equal to it. ``ModelParallelAlexNet(..., lrn_halo=...)``
follows the grouped model unless told otherwise.

Weights convert both ways with the grouped model's ``state_dict`` (:meth:`from_grouped`,
:meth:`to_grouped`); checkpoints and ``model.safetensors`` always hold the grouped layout, so a run
trained with ``--model-parallel 2`` evaluates, predicts and resumes like any other.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from alexnet.models.alexnet import AlexNet
from alexnet.models.layers import LocalResponseNorm

# What each layer of the grouped model becomes.
_INPUT = "input"  # conv1: each tower computes its half of the kernels from the whole image
_OWN = "own"  # grouped conv (conv2, conv4, conv5): each tower sees only its own maps
_CROSS = "cross"  # conv3 / fc6 / fc7: each tower's half of the units reads both towers
_LRN = "lrn"  # response normalisation (halo exchange, see the module docstring)
_LOCAL = "local"  # activations, pooling, dropout: elementwise or per map, copied per tower


def _rows(t: torch.Tensor, tower: int) -> torch.Tensor:
    half = t.shape[0] // 2
    return t[tower * half : (tower + 1) * half]


class ModelParallelAlexNet(nn.Module):
    """A two-tower :class:`~alexnet.models.alexnet.AlexNet` split over two devices (§3.2).

    ``devices``: two entries, e.g. ``["cuda:0", "cuda:1"]`` (or ``["cpu", "cpu"]`` for tests).
    Build it from a grouped model (``towers=2``); the weights are copied, so
    ``ModelParallelAlexNet(m, devs)(x)`` equals ``m(x)`` up to float summation order.
    """

    def __init__(self, grouped: AlexNet, devices: Sequence[str | torch.device], *, lrn_halo: bool | None = None) -> None:
        super().__init__()
        if not isinstance(grouped, AlexNet) or getattr(grouped, "towers", 1) != 2:
            raise ValueError("model parallelism splits the two towers of the paper's network: model 'alexnet' with towers=2")
        if len(devices) != 2:
            raise ValueError(f"model parallelism needs 2 devices, got {list(devices)}")
        self.devices = [torch.device(d) for d in devices]
        self.lrn_halo = bool(getattr(grouped, "lrn_halo", True)) if lrn_halo is None else lrn_halo
        self.input_size = getattr(grouped, "input_size", 224)
        self.feature_kinds: list[str] = []
        towers_f: list[list[nn.Module]] = [[], []]
        first_conv = True
        for m in grouped.features:
            if isinstance(m, nn.Conv2d):
                if first_conv:
                    kind = _INPUT
                elif m.groups == 2:
                    kind = _OWN
                elif m.groups == 1:
                    kind = _CROSS
                else:
                    raise ValueError(f"cannot split a convolution with groups={m.groups}")
                first_conv = False
                for t in (0, 1):
                    in_ch = m.in_channels // 2 if kind == _OWN else m.in_channels
                    c = nn.Conv2d(in_ch, m.out_channels // 2, m.kernel_size, m.stride, m.padding)  # type: ignore[arg-type]
                    towers_f[t].append(c)
            else:
                kind = _LRN if isinstance(m, LocalResponseNorm) else _LOCAL
                for t in (0, 1):
                    c = copy.deepcopy(m)
                    if kind == _LRN:
                        c.groups = 1  # each tower holds one group of the grouped model's maps
                    towers_f[t].append(c)
            self.feature_kinds.append(kind)
        self.features = nn.ModuleList([nn.ModuleList(towers_f[t]) for t in (0, 1)])
        self.avgpool = nn.ModuleList([copy.deepcopy(grouped.avgpool) for _ in (0, 1)])

        linears = [i for i, m in enumerate(grouped.classifier) if isinstance(m, nn.Linear)]
        self.head_index = linears[-1]
        if self.head_index != len(grouped.classifier) - 1:
            raise ValueError("expected the classifier to end with its output layer")
        self.classifier_kinds: list[str] = []
        towers_c: list[list[nn.Module]] = [[], []]
        for m in list(grouped.classifier)[: self.head_index]:
            if isinstance(m, nn.Linear):
                kind = _CROSS
                for t in (0, 1):
                    towers_c[t].append(nn.Linear(m.in_features, m.out_features // 2))
            else:
                kind = _LOCAL
                for t in (0, 1):
                    towers_c[t].append(copy.deepcopy(m))
            self.classifier_kinds.append(kind)
        self.classifier = nn.ModuleList([nn.ModuleList(towers_c[t]) for t in (0, 1)])
        head = grouped.classifier[self.head_index]
        self.head = nn.Linear(head.in_features, head.out_features)  # fc8 on device 0
        self.load_grouped_state_dict(grouped.state_dict())
        self.place()

    # -- placement and weights -----------------------------------------------------------------

    def place(self) -> "ModelParallelAlexNet":
        """Move each tower to its device and fc8 to device 0 (call again after ``.to()``)."""
        for t in (0, 1):
            self.features[t].to(self.devices[t])
            self.avgpool[t].to(self.devices[t])
            self.classifier[t].to(self.devices[t])
        self.head.to(self.devices[0])
        return self

    def _split_keys(self) -> list[tuple[str, list[str]]]:
        """(grouped key, this module's keys: one per tower, or one for fc8) for every tensor."""
        out: list[tuple[str, list[str]]] = []
        for i, kind in enumerate(self.feature_kinds):
            if kind in (_INPUT, _OWN, _CROSS):
                out += [(f"features.{i}.{p}", [f"features.{t}.{i}.{p}" for t in (0, 1)]) for p in ("weight", "bias")]
        for j, kind in enumerate(self.classifier_kinds):
            if kind == _CROSS:
                out += [(f"classifier.{j}.{p}", [f"classifier.{t}.{j}.{p}" for t in (0, 1)]) for p in ("weight", "bias")]
        out += [(f"classifier.{self.head_index}.{p}", [f"head.{p}"]) for p in ("weight", "bias")]
        return out

    def from_grouped(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The grouped model's tensors (state_dict or gradients) in this module's layout: tower t
        takes the t-th half of each layer's output units (rows); fc8 is whole."""
        out: dict[str, torch.Tensor] = {}
        for g, own in self._split_keys():
            if g not in sd:
                raise RuntimeError(f"missing key {g!r} for the model-parallel split")
            if len(own) == 1:
                out[own[0]] = sd[g]
            else:
                out.update({k: _rows(sd[g], t) for t, k in enumerate(own)})
        return out

    def to_grouped(self, d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This module's tensors (state_dict or gradients) in the grouped model's layout, on the CPU."""
        return {g: torch.cat([d[k].detach().cpu() for k in own]) for g, own in self._split_keys()}

    def grouped_state_dict(self) -> dict[str, torch.Tensor]:
        return self.to_grouped(self.state_dict())

    def load_grouped_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        own = self.from_grouped(sd)
        extra = sorted(set(sd) - {g for g, _ in self._split_keys()})
        if extra:
            raise RuntimeError(f"unexpected key {extra[0]!r} for the model-parallel split")
        with torch.no_grad():
            for name, p in self.state_dict().items():
                p.copy_(own[name])

    # -- forward -------------------------------------------------------------------------------

    def _lrn(self, layer: nn.Module, xs: list[torch.Tensor], t: int) -> torch.Tensor:
        if not self.lrn_halo:
            return layer(xs[t])
        h = layer.size // 2  # type: ignore[operator]
        dev = self.devices[t]
        if t == 0:  # tower 1's last maps border tower 2's first maps
            ext = torch.cat([xs[0], xs[1][:, :h].to(dev)], 1)  # N×(C/2+h)×H×W
            return layer(ext)[:, : xs[0].shape[1]]
        ext = torch.cat([xs[0][:, -h:].to(dev), xs[1]], 1)  # N×(h+C/2)×H×W
        return layer(ext)[:, h:]

    def _both(self, xs: list[torch.Tensor], t: int) -> torch.Tensor:
        """Both towers' activations on tower t's device, tower 1 first (the grouped channel order)."""
        dev = self.devices[t]
        return torch.cat([xs[0].to(dev), xs[1].to(dev)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [x.to(d) for d in self.devices]  # §3.2: each GPU sees the whole image
        for i, kind in enumerate(self.feature_kinds):
            layers = [self.features[t][i] for t in (0, 1)]
            if kind == _CROSS:
                xs = [layers[t](self._both(xs, t)) for t in (0, 1)]
            elif kind == _LRN:
                xs = [self._lrn(layers[t], xs, t) for t in (0, 1)]
            else:
                xs = [layers[t](xs[t]) for t in (0, 1)]
        # Flattening each tower's N×(C/2)×6×6 maps and concatenating gives the grouped model's
        # N×(C·6·6) vector: channel-major, tower 1's channels first.
        xs = [torch.flatten(self.avgpool[t](xs[t]), 1) for t in (0, 1)]
        for j, kind in enumerate(self.classifier_kinds):
            layers = [self.classifier[t][j] for t in (0, 1)]
            if kind == _CROSS:
                xs = [layers[t](self._both(xs, t)) for t in (0, 1)]
            else:
                xs = [layers[t](xs[t]) for t in (0, 1)]
        return self.head(self._both(xs, 0))  # N×classes on device 0


def model_parallel_devices(device: torch.device, local_rank: int = 0) -> list[torch.device]:
    """The two devices of one model replica: GPUs 2r and 2r+1 for local process r (so DDP ×
    model parallelism uses 2 GPUs per process), or the CPU twice."""
    if device.type == "cuda":
        first = 2 * local_rank if device.index is None or device.index == local_rank else device.index
        return [torch.device("cuda", first), torch.device("cuda", first + 1)]
    return [device, device]
