"""§3.4: overlapping max-pooling (z = 3, s = 2) against non-overlapping (z = s = 2). The paper: overlapping
lowers top-1 / top-5 error by 0.4 / 0.3 points and makes the network slightly harder to overfit."""

from __future__ import annotations

from pathlib import Path

from alexnet.experiments.ablation import MEDIUM, QUICK, PaperDiff, run_ablation
from alexnet.experiments.runner import Runner, Variant

TITLE = "overlapping pooling (§3.4)"
CLAIM = ("Overlapping pooling (z = 3, s = 2) reduces the top-1 and top-5 error rates by 0.4% and 0.3% compared with "
         "the non-overlapping scheme z = s = 2, which produces output of equivalent dimensions (§3.4).")


def run(runner: Runner) -> Path:
    model = runner.main_model()
    base = runner.base_config(model, QUICK, MEDIUM)
    return run_ablation(
        runner, title=TITLE, claim=CLAIM, base=base, paper=[PaperDiff("pool-2x2-s2", 0.004, 0.003)],
        reference=Variant("pool-3x3-s2", {"model_options": {"overlapping_pool": True}}, {"overlapping_pool": True}),
        others=[Variant("pool-2x2-s2", {"model_options": {"overlapping_pool": False}}, {"overlapping_pool": False})],
        notes=["The paper also observes that overlapping pooling makes overfitting slightly harder: compare the "
               "training error columns.",
               "On alexnet-cifar both pools are padded so that each halves the map exactly (same output sizes)."])
