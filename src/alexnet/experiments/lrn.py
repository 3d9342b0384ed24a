"""§3.3: local response normalisation against none. The paper: LRN lowers top-1 / top-5 error by 1.4 /
1.2 points on ImageNet, and a four-layer CIFAR-10 net goes from 13% to 11% test error with it."""

from __future__ import annotations

from pathlib import Path

from alexnet.experiments.ablation import MEDIUM, QUICK, PaperDiff, run_ablation
from alexnet.experiments.runner import Runner, Variant

TITLE = "local response normalisation (§3.3)"
CLAIM = ("Response normalisation reduces top-1 and top-5 error rates by 1.4% and 1.2%; on CIFAR-10 a four-layer CNN "
         "achieved 13% test error without normalisation and 11% with it (§3.3).")


def run(runner: Runner) -> Path:
    model = runner.main_model()
    base = runner.base_config(model, QUICK, MEDIUM)
    paper = ([PaperDiff("lrn-none", 0.014, 0.012)] if runner.data.large
             else [PaperDiff("lrn-none", 0.02, None, "CIFAR-10 test, 13% vs 11%")])
    return run_ablation(
        runner, title=TITLE, claim=CLAIM, base=base, paper=paper,
        reference=Variant("lrn-paper", {"model_options": {"lrn": "paper"}}, {"lrn": "paper"}),
        others=[Variant("lrn-none", {"model_options": {"lrn": "none"}}, {"lrn": "none"})],
        notes=["LRN as the paper writes it: k = 2, n = 5, α = 1e-4 (not divided by n), β = 0.75, after the ReLU of "
               "the normalised layers.",
               "ImageNet (paper's network): −1.4 top-1 / −1.2 top-5 with LRN; CIFAR-10 (four-layer net): 13% → 11%."])
