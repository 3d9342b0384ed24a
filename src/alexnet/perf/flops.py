"""FLOPs of a training step, and what a throughput means against the hardware: TFLOP/s, MFU, hours
for 90 epochs of ImageNet."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

# 90 epochs of ImageNet-1k's training set (1,281,167 images): 115.3M images.
IMAGES_90_EPOCHS = 90 * 1_281_167
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched against the
# device name, most specific first.
SPEC_PEAK_BF16 = (("h100 pcie", 756.0), ("h100 nvl", 835.0), ("h100", 989.0), ("gh200", 989.0), ("h200", 989.0),
                  ("a100", 312.0))
# The practical ceiling: the bf16 rate of a large matmul measured on the device (TFLOP/s), with where
# it was measured.
MEASURED_PEAK_BF16 = (("h100 80gb hbm3", 806.0, "a large bf16 matmul measured on an H100 SXM (HBM3) machine"),)


def peaks(device_name: str) -> tuple[float | None, float | None, str | None]:
    """(spec dense bf16 peak, measured practical ceiling, its source) in TFLOP/s for a device name."""
    name = device_name.lower()
    spec = next((p for key, p in SPEC_PEAK_BF16 if key in name), None)
    meas = next(((p, src) for key, p, src in MEASURED_PEAK_BF16 if key in name), (None, None))
    return spec, meas[0], meas[1]


def grouped_conv_backward_flop(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias: Any,
                               _stride: Any, _padding: Any, _dilation: Any, transposed: bool, _output_padding: Any,
                               groups: int, output_mask: list[bool], out_shape: Any = None, **kwargs: Any) -> int:
    """``aten.convolution_backward``'s FLOPs with groups counted in the weight gradient too.

    torch's own formula (torch.utils.flop_counter.conv_backward_flop, torch 2.11–2.14) counts the
    weight gradient of a grouped convolution as if it were ungrouped, ``groups`` times too many: for
    the paper's two-tower conv2, conv4 and conv5 (§3.2, groups=2) that inflates the paper net's count
    by 0.82 GFLOP per image (4.96 instead of 4.14). Each group's weight gradient only correlates its
    own C_in/groups input channels with its own C_out/groups output gradients."""
    def t(shape: Any) -> list[int]:
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:  # grad_input: a transposed convolution with the (already per-group) weight
        flops += conv_flop_count(list(grad_out_shape), list(w_shape), list(out_shape[0]), not transposed)
    if output_mask[1]:  # grad_weight: input ⋆ grad_out, one correlation per group
        gw = list(out_shape[1])
        if transposed:
            flops += conv_flop_count(t(grad_out_shape), t(x_shape), t(gw), transposed=False) // groups
        else:
            flops += conv_flop_count(t(x_shape), t(grad_out_shape), t(gw), transposed=False) // groups
    return flops


def flops_per_image(build: Callable[[], nn.Module], size: int = 224, batch: int = 2, fix_groups: bool = True) -> float:
    """FLOPs of one forward + backward per image, counted by FlopCounterMode on the meta device (no
    data, no time): convolutions and matmuls, including conv1's weight gradient but not its input
    gradient (the input needs none), as in training. ``fix_groups``: count grouped convolutions'
    weight gradients correctly (:func:`grouped_conv_backward_flop`)."""
    with torch.device("meta"):
        model = build()
        x = torch.randn(batch, 3, size, size)
        y = torch.randint(0, 1000, (batch,))
    model.train()
    mapping = {torch.ops.aten.convolution_backward: grouped_conv_backward_flop} if fix_groups else {}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def derived(img_per_s: float, flops_per_img: float | None, device_name: str | None) -> dict[str, Any]:
    """Hours for 90 epochs of ImageNet at ``img_per_s``; with a FLOP count, TFLOP/s, and with a known
    GPU (``device_name``), MFU against its spec peak and its measured ceiling."""
    out: dict[str, Any] = {"hours_90_epochs": round(IMAGES_90_EPOCHS / img_per_s / 3600, 2)}
    if flops_per_img:
        spec, meas, src = peaks(device_name) if device_name else (None, None, None)
        tf = img_per_s * flops_per_img / 1e12
        out.update(gflop_per_img=round(flops_per_img / 1e9, 3), tflop_per_s=round(tf, 1), peak_tflops_spec=spec,
                   mfu_spec=round(tf / spec, 4) if spec else None, peak_tflops_measured=meas,
                   peak_measured_source=src, mfu_measured_peak=round(tf / meas, 4) if meas else None)
    return out


__all__ = ["IMAGES_90_EPOCHS", "derived", "flops_per_image", "grouped_conv_backward_flop", "peaks"]
