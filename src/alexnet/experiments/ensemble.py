"""§6 (Table 2): averaging the predictions of several CNNs. The paper: one CNN 40.7 / 18.2 top-1 / top-5
on ILSVRC-2012 val, five CNNs averaged 38.1 / 16.4 (and seven, two of them pre-trained on Fall 2011,
36.7 / 15.4). We train N networks that differ only in their seed (initial weights, shuffle,
augmentation draws, dropout masks), then average their softmax outputs on the validation images and
compare each single net with the averages of the first 2 … N. Every error is on the report half of the
validation images (:func:`~alexnet.engine.evaluate.selection_half`), the denominator of the other
experiments' tables too; no rate is chosen here, so the selection half is simply left out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alexnet.engine.evaluate import topk_correct
from alexnet.errors import UserError
from alexnet.experiments.ablation import QUICK
from alexnet.experiments.runner import Runner, Variant, mean_std, pm, selection_half
from alexnet.experiments.stats import one_sample
from alexnet.report.figures import plot_series
from alexnet.report.tables import markdown_table

TITLE = "ensembles of independently trained networks (§6, Table 2)"
CLAIM = ("Averaging the predictions of five similar CNNs gives an error rate of 16.4% top-5 (38.1% top-1) on ILSVRC-2012 "
         "validation, against 18.2% (40.7%) for one CNN (§6, Table 2).")
DEFAULT_SEEDS = {"full": 5, "medium": 5, "quick": 3, "test": 2}  # ensemble size N
# Medium scale (Fashion-MNIST, 2 CPU cores): each member 30,000 training images for 4 epochs at batch
# 128, the last at a tenth of the rate: 5 members, about 24 minutes (``--plan``).
MEDIUM: dict[str, Any] = {"epochs": 4, "batch_size": 128, "train_subset": 30000, "eval_every": 4,
                          "schedule": "step", "step_epochs": [3], "max_steps_per_epoch": 0}
PAPER = [{"nets": 1, "top1_err": 0.407, "top5_err": 0.182}, {"nets": 5, "top1_err": 0.381, "top5_err": 0.164},
         {"nets": 7, "top1_err": 0.367, "top5_err": 0.154, "note": "two pre-trained on ImageNet Fall 2011"}]


def run(runner: Runner) -> Path:
    if len(runner.seeds) < 2:
        raise UserError(f"--seeds {len(runner.seeds)}: an ensemble needs at least 2 networks")
    model = runner.main_model()
    base = runner.base_config(model, QUICK, MEDIUM)
    single = Variant("single", {}, {})
    runs = runner.train_all(base, [single])
    labels = None
    probs = []
    for r in runs:
        p, y = runner.predict(r["run"], "val")
        keep = torch.from_numpy(~selection_half(y.numpy()))  # the report half
        p, y = p[keep], y[keep]
        probs.append(p)
        labels = y
        c1, c5 = topk_correct(p, y)
        # Centre-crop error of the saved weights on the report half.
        r["top1_err"], r["top5_err"], r["images"] = 1 - c1 / len(y), 1 - c5 / len(y), len(y)
        r["nets"] = 1
    assert labels is not None
    n = len(labels)
    rows: list[dict[str, Any]] = list(runs)
    curve1, curve5 = [], []
    m1, _, _ = mean_std(r["top1_err"] for r in runs)
    m5, _, _ = mean_std(r["top5_err"] for r in runs)
    curve1.append((1, m1))
    curve5.append((1, m5))
    for k in range(2, len(probs) + 1):
        avg = torch.stack(probs[:k]).mean(0)  # k×N×C -> N×C: the mean of the softmax outputs
        c1, c5 = topk_correct(avg, labels)
        rows.append({"variant": f"ensemble-{k}", "nets": k, "seeds": [r["seed"] for r in runs[:k]],
                     "top1_err": 1 - c1 / n, "top5_err": 1 - c5 / n, "images": n,
                     "time_s": sum(r["time_s"] or 0.0 for r in runs[:k])})
        curve1.append((k, 1 - c1 / n))
        curve5.append((k, 1 - c5 / n))
    s1, sd1, _ = mean_std(r["top1_err"] for r in runs)
    s5, sd5, _ = mean_std(r["top5_err"] for r in runs)
    full = rows[-1]
    # The gain over each member (ensemble − member, on the same images), its t interval over the
    # members; the paper: the ensemble is better (a negative gain).
    g1 = one_sample([full["top1_err"] - r["top1_err"] for r in runs])
    g5 = one_sample([full["top5_err"] - r["top5_err"] for r in runs])
    full["gain_top1"], full["gain_top1_ci95"] = g1.diff, [g1.low, g1.high] if g1.tested else None
    full["gain_top5"], full["gain_top5_ci95"] = g5.diff, [g5.low, g5.high] if g5.tested else None
    full["verdict"] = g1.verdict(-1.0)
    full["gain_top1_mde"] = g1.mde
    full["paper"] = "5 CNNs vs 1: -2.6 top-1 / -1.8 top-5 (ILSVRC-2012 val)"
    table = [
        {"": "one net (mean ± std over the N nets)", "top-1 err": pm(s1, sd1), "top-5 err": pm(s5, sd5),
         "paper (ILSVRC-2012 val)": "1 CNN: 40.7% / 18.2%"},
        {"": f"average of {len(runs)} nets", "top-1 err": pm(full["top1_err"], None), "top-5 err": pm(full["top5_err"], None),
         "paper (ILSVRC-2012 val)": "5 CNNs: 38.1% / 16.4%"},
        {"": "gain (ensemble − single) [95% CI over the nets]", "top-1 err": g1.text(unit=" points"),
         "top-5 err": g5.text(unit=" points"), "paper (ILSVRC-2012 val)": "5 CNNs: −2.6 / −1.8 points"},
        {"": "verdict", "top-1 err": g1.verdict(-1.0), "top-5 err": g5.verdict(-1.0), "paper (ILSVRC-2012 val)": ""},
    ]
    fig = plot_series({"top-1": curve1, "top-5": curve5}, runner.out / "ensemble.png", xlabel="networks averaged",
                      ylabel="validation error rate", title="Error against ensemble size (1 = mean single net)")
    sections = [f"## Result (the report half of the validation images: {n:,} images, every row)\n\n"
                + markdown_table(table).rstrip(),
                "The paper's numbers (ILSVRC-2012 val, 10-crop): " + "; ".join(
                    f"{p['nets']} CNN{'s' if p['nets'] > 1 else ''} {100 * p['top1_err']:.1f} / {100 * p['top5_err']:.1f}"
                    + (f" ({p['note']})" if p.get("note") else "") for p in PAPER) + "."]
    notes = ["Members differ only in their seed; each is evaluated on the centre crop, and the ensemble averages the "
             "members' softmax outputs (the paper also averages its 10 crops; see `alexnet evaluate --ten-crop`).",
             "One arm, no learning-rate sweep: every member is the recipe's run at the recipe's rate. The gain's interval "
             "is over the members (the ensemble against each of them, on the same images); the members are part of the "
             "ensemble, so it says how consistently the average beats a single net, not a test between independent arms."]
    if runner.scale != "full":
        notes.append(f"{runner.scale.capitalize()} scale: each member trains {base['epochs']} epochs on "
                     f"{base.get('train_subset') or runner.data.train_images:,} images; "
                     "`--seeds N` sets the ensemble size (default 5, 3 with --quick).")
    runner.write_results(rows)
    return runner.write_report(title=TITLE, claim=CLAIM, sections=sections, base=base, rows=rows, figures=[fig],
                               notes=notes, row_columns=["variant", "seed", "nets", "top1_err", "top5_err",
                                                         "train_top1_err", "epochs", "time_s"])
