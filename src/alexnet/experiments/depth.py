"""§7: depth matters. The paper: removing any of the middle convolutional layers of its network costs
about 2 points of top-1 error.

"Removing conv *i*" takes out that convolution, its ReLU and its response normalisation; the
pooling stays, so the maps keep their sizes. Where the widths around the removed layer differ (the
paper's net: conv2 takes 96 maps and gives 256), the next conv is rebuilt to read the previous
layer's maps (its input channels change; groups are kept when they divide them, else 1) and
initialised as the network initialises that layer.

The models have no option for this yet, so this module registers a local subclass under the same
model name for the duration of the experiment, adding the keyword option ``remove_conv`` (1-based
index of the conv to remove, 0 = none). The run folders record ``model_options: {remove_conv: i}``,
so once the models take that option natively (see :func:`needs_local_option`) they load as they are.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from torch import nn

from alexnet import models
from alexnet.experiments.ablation import QUICK, PaperDiff, run_ablation
from alexnet.experiments.runner import Runner, Variant

TITLE = "removing a middle convolutional layer (§7)"
CLAIM = ("Our network's performance degrades if a single convolutional layer is removed. For example, removing "
         "any of the middle layers results in a loss of about 2% for the top-1 performance of the network (§7).")
OPTION = "remove_conv"


def middle_convs(model: str) -> list[int]:
    """1-based indices of the middle conv layers: all but the first and the last."""
    n = 5 if model in ("alexnet", "alexnet-owt") else 3
    return list(range(2, n))


def strip_conv(net: nn.Module, index: int) -> nn.Module:
    """Take conv ``index`` (1-based, a middle one) out of ``net.features`` in place, with its
    activation and LRN (the modules between it and the next conv or pooling), keeping the pooling;
    rebuild the next conv if its input channels no longer match."""
    feats = net.features
    assert isinstance(feats, nn.Sequential)
    conv_pos = [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)]
    if not 1 < index < len(conv_pos):
        raise ValueError(f"{OPTION}={index}: only a middle conv layer can be removed; accepted: "
                         f"{', '.join(map(str, range(2, len(conv_pos))))}")
    pos = conv_pos[index - 1]
    end = conv_pos[index]  # the next conv
    for i in range(pos, end):
        if not isinstance(feats[i], (nn.MaxPool2d, nn.AvgPool2d)):
            feats[i] = nn.Identity()  # the conv, its activation and its normalisation
    prev: nn.Conv2d = feats[conv_pos[index - 2]]  # type: ignore[assignment]
    nxt: nn.Conv2d = feats[end]  # type: ignore[assignment]
    if nxt.in_channels != prev.out_channels:
        groups = nxt.groups if prev.out_channels % nxt.groups == 0 and nxt.out_channels % nxt.groups == 0 else 1
        new = nn.Conv2d(prev.out_channels, nxt.out_channels, nxt.kernel_size, stride=nxt.stride,  # type: ignore[arg-type]
                        padding=nxt.padding, groups=groups)  # type: ignore[arg-type]
        # Initialise as the network did the layer it replaces: same weight spread, same biases.
        std = float(nxt.weight.detach().std())
        fan_in_new = new.weight[0].numel()
        fan_in_old = nxt.weight[0].numel()
        if abs(std - (2.0 / fan_in_old) ** 0.5) < 0.2 * (2.0 / fan_in_old) ** 0.5:
            std = (2.0 / fan_in_new) ** 0.5  # He initialisation scales with the fan-in
        nn.init.normal_(new.weight, std=std)
        with_bias = nxt.bias.detach().clone() if nxt.bias is not None else None
        if with_bias is not None:
            new.bias.data.copy_(with_bias)
        feats[end] = new
    return net


def needs_local_option(model: str) -> bool:
    return OPTION not in models.options(model)


@contextmanager
def local_option(model: str) -> Iterator[None]:
    """Register, for the duration, a subclass of ``model``'s class that accepts ``remove_conv``
    under the same name (unless the models already accept it)."""
    if not needs_local_option(model):
        yield
        return
    original = models.info(model)
    if original.builder is not original.cls and model != "alexnet":
        raise ValueError(f"{OPTION}: no local implementation for model {model!r}")

    class WithoutConv(original.cls):  # type: ignore[misc, valid-type]
        """The model with conv ``remove_conv`` taken out (0: the model itself)."""

        def __init__(self, num_classes: int = 1000, *, remove_conv: int = 0, **options: Any) -> None:
            super().__init__(num_classes, **options)
            if remove_conv:
                strip_conv(self, remove_conv)

    # models.options() reads the keyword-only parameters of the class: the base's plus ours.
    sig = inspect.signature(original.cls.__init__)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params.append(inspect.Parameter(OPTION, inspect.Parameter.KEYWORD_ONLY, default=0))
    WithoutConv.__init__.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]

    registry = models._REGISTRY  # the one place the engine looks models up
    registry[model] = models.ModelInfo(original.name, WithoutConv, WithoutConv, original.input_size, original.input_norm,
                                       original.summary)
    try:
        yield
    finally:
        registry[model] = original


def run(runner: Runner) -> Path:
    model = runner.main_model()
    base = runner.base_config(model, QUICK)
    others = [Variant(f"no-conv{i}", {"model_options": {OPTION: i}}, {OPTION: i}) for i in middle_convs(model)]
    with local_option(model):
        return run_ablation(
            runner, title=TITLE, claim=CLAIM, base=base,
            paper=[PaperDiff(v.name, 0.02, None, "ILSVRC, 'about 2%'") for v in others],
            reference=Variant("full", {}, {OPTION: 0}), others=others,
            notes=["Removing conv *i* removes it with its ReLU and response normalisation; pooling stays, so map "
                   "sizes are unchanged; the next conv is rebuilt to read the previous layer's maps when the widths "
                   "differ.",
                   "alexnet-cifar has three conv layers, so its only middle layer is conv2; the paper's network has "
                   "conv2, conv3 and conv4." if model == "alexnet-cifar" else
                   "The paper's network: conv2, conv3 and conv4 are its middle layers."])
