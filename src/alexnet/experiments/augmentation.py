"""§4.1: data augmentation. Three arms trained alike: no augmentation (centre crop only), random crops
and horizontal flips, and crops + flips + the PCA colour noise ("fancy PCA", α ~ N(0, 0.1)). The
paper: crops and flips are what keeps the network from substantial overfitting; the colour noise
lowers top-1 error by over 1 point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alexnet.experiments.ablation import PaperDiff, run_ablation
from alexnet.experiments.runner import Runner, Variant

TITLE = "data augmentation (§4.1)"
CLAIM = ("Without random 224×224 patches and their reflections the network suffers from substantial overfitting; "
         "the PCA colour augmentation reduces the top-1 error rate by over 1% (§4.1).")
# Quick scale: a 1,000-image subset for 12 epochs, the last two at a tenth of the rate (augmentation
# matters most when data is scarce, and once the network without it has had the time to overfit).
# Three arms × (2 rates on seed 0 + seeds 1, 2 at the chosen rate) = 12 runs.
QUICK: dict[str, Any] = {"epochs": 12, "batch_size": 64, "train_subset": 1000, "eval_every": 4,
                         "schedule": "step", "step_epochs": [10]}
# Medium scale (Fashion-MNIST, 2 CPU cores): 5,000 training images for 9 epochs at batch 128, the last
# at a tenth of the rate: three arms, 15 runs plus any a sweep adds, about 28 minutes (``--plan``).
MEDIUM: dict[str, Any] = {"epochs": 9, "batch_size": 128, "train_subset": 5000, "eval_every": 9,
                          "schedule": "step", "step_epochs": [8], "max_steps_per_epoch": 0}


def run(runner: Runner) -> Path:
    model = runner.main_model()
    base = runner.base_config(model, QUICK, MEDIUM)
    return run_ablation(
        runner, title=TITLE, claim=CLAIM, base=base,
        # Reference: the paper's full scheme; the others remove parts of it (+ = worse than the full scheme).
        paper=[PaperDiff("crops-flips", 0.01, None, "ILSVRC, 'over 1%'"),
               PaperDiff("none", None, None, "ILSVRC, 'substantial overfitting'", sign=1.0)],
        reference=Variant("crops-flips-pca", {"random_crop": True, "flip": True, "pca_std": 0.1},
                          {"random_crop": True, "flip": True, "pca_std": 0.1}),
        others=[Variant("crops-flips", {"random_crop": True, "flip": True, "pca_std": 0.0},
                        {"random_crop": True, "flip": True, "pca_std": 0.0}),
                # No random crops, so no padding for them either (the cifar recipe pads 32×32 images).
                Variant("none", {"random_crop": False, "flip": False, "pca_std": 0.0, "crop_padding": 0},
                        {"random_crop": False, "flip": False, "pca_std": 0.0})],
        notes=["`none` trains on the centre crop only (the crop the test uses); `crops-flips` adds random crops and "
               "horizontal reflections; `crops-flips-pca` adds the colour noise along the RGB principal components "
               "of the training set (§4.1).",
               "The paper gives no number for removing crops and flips (only 'substantial overfitting'); its "
               "'over 1%' is for the colour noise, i.e. crops-flips − crops-flips-pca ≥ +1 point top-1. Compare "
               "training and validation error in the table of every run for the overfitting."],
        quick_note=f"Quick/test scale: {base['epochs']} epochs on "
                   + (f"a {base['train_subset']:,}-image subset of the data" if base.get("train_subset") else "the data")
                   + f", a two-rate sweep and {len(runner.seeds)} seeds; the "
                   "synthetic shapes have little colour variation to learn invariance to, so the PCA arm is not "
                   "expected to help much here.")
