"""FLOPs of a network, counted by torch's FlopCounterMode on the meta device: what a training step
costs (the benchmarks' MFU, :mod:`alexnet.perf.flops`) and what one image costs at inference (the
model card)."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


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


def flops_per_image(build: Callable[[], nn.Module], size: int = 224, batch: int = 2, fix_groups: bool = True,
                    backward: bool = True) -> float:
    """FLOPs of one forward + backward per image, counted by FlopCounterMode on the meta device (no
    data, no time): convolutions and matmuls, including conv1's weight gradient but not its input
    gradient (the input needs none), as in training. ``fix_groups``: count grouped convolutions'
    weight gradients correctly (:func:`grouped_conv_backward_flop`). ``backward=False``: the
    forward pass only, in eval mode (inference: a model card's FLOPs per image). A multiply-add
    counts as 2 FLOPs."""
    with torch.device("meta"):
        model = build()
        x = torch.randn(batch, 3, size, size)
        y = torch.randint(0, 1000, (batch,))
    model.train(backward)
    mapping = {torch.ops.aten.convolution_backward: grouped_conv_backward_flop} if fix_groups else {}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        if backward:
            F.cross_entropy(model(x), y).backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops() / batch


__all__ = ["flops_per_image", "grouped_conv_backward_flop"]
