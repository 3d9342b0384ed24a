"""§7: depth matters. The paper: removing any of the middle convolutional layers of its network costs
about 2 points of top-1 error.

"Removing conv *i*" is the models' ``remove_conv=i`` option: that convolution goes with its ReLU
and response normalisation; the pooling stays, so the maps keep their sizes, and the next conv
reads the previous layer's maps (initialised as the network initialises that layer).
"""

from __future__ import annotations

from pathlib import Path

from alexnet.experiments.ablation import MEDIUM, QUICK, PaperDiff, run_ablation
from alexnet.experiments.runner import Runner, Variant

TITLE = "removing a middle convolutional layer (§7)"
CLAIM = ("Our network's performance degrades if a single convolutional layer is removed. For example, removing "
         "any of the middle layers results in a loss of about 2% for the top-1 performance of the network (§7).")
OPTION = "remove_conv"


def middle_convs(model: str) -> list[int]:
    """1-based indices of the middle conv layers: all but the first and the last."""
    n = 5 if model in ("alexnet", "alexnet-owt") else 3
    return list(range(2, n))


def run(runner: Runner) -> Path:
    model = runner.main_model()
    base = runner.base_config(model, QUICK, MEDIUM)
    others = [Variant(f"no-conv{i}", {"model_options": {OPTION: i}}, {OPTION: i}) for i in middle_convs(model)]
    return run_ablation(
        runner, title=TITLE, claim=CLAIM, base=base,
        paper=[PaperDiff(v.name, 0.02, None, "ILSVRC, 'about 2%'") for v in others],
        reference=Variant("full", {}, {OPTION: 0}), others=others,
        notes=["Removing conv *i* removes it with its ReLU and response normalisation; pooling stays, so map "
               "sizes are unchanged; the next conv reads the previous layer's maps (model option remove_conv).",
               "alexnet-cifar has three conv layers, so its only middle layer is conv2; the paper's network has "
               "conv2, conv3 and conv4." if model == "alexnet-cifar" else
               "The paper's network: conv2, conv3 and conv4 are its middle layers."])
