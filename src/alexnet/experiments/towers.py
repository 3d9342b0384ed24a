"""§3.2: the two-tower network (two GPUs; conv2, conv4, conv5 see only their own tower) against a
one-tower network with half as many kernels in each conv layer. The paper: two towers lower top-1 /
top-5 error by 1.7 / 1.2 points. Its footnote: the one-GPU net keeps the full number of kernels in the
last conv layer (most parameters are in fc6, which reads it)."""

from __future__ import annotations

from pathlib import Path

from alexnet.experiments.ablation import MEDIUM, QUICK, PaperDiff, run_ablation
from alexnet.experiments.runner import Runner, Variant
from alexnet.models.alexnet import PAPER_WIDTHS

TITLE = "two towers vs one tower with half the kernels (§3.2)"
CLAIM = ("The two-GPU scheme reduces top-1 and top-5 error rates by 1.7% and 1.2%, compared with a net with half as "
         "many kernels in each convolutional layer trained on one GPU (§3.2; the one-GPU net keeps the full number "
         "of kernels in the last convolutional layer).")
CIFAR_WIDTHS = (32, 32, 64)


def halved(model: str) -> list[int]:
    """The one-tower widths: half of each conv; for the paper's net the last conv keeps its width
    (the paper's footnote). For alexnet-cifar every conv is halved."""
    if model == "alexnet":
        return [w // 2 for w in PAPER_WIDTHS[:-1]] + [PAPER_WIDTHS[-1]]
    return [w // 2 for w in CIFAR_WIDTHS]


def run(runner: Runner) -> Path:
    model = runner.main_model()
    base = runner.base_config(model, QUICK, MEDIUM)
    full = list(PAPER_WIDTHS) if model == "alexnet" else list(CIFAR_WIDTHS)
    one = halved(model)
    return run_ablation(
        runner, title=TITLE, claim=CLAIM, base=base, paper=[PaperDiff("one-tower-half", 0.017, 0.012)],
        reference=Variant("two-towers", {"model_options": {"towers": 2, "widths": full}}, {"towers": 2, "widths": full}),
        others=[Variant("one-tower-half", {"model_options": {"towers": 1, "widths": one}}, {"towers": 1, "widths": one})],
        notes=[f"Two towers: widths {full} with conv groups of 2 (§3.2). One tower: widths {one}"
               + (" (the last conv keeps 256 kernels, the paper's footnote)." if model == "alexnet" else
                  " (every conv halved; on alexnet-cifar only conv2 is split into towers)."),
               "The comparison is not of equal parameter counts: the one-tower net has fewer kernels, as in the paper."])
