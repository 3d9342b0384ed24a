"""§4.2: dropout. The paper: without dropout the network overfits substantially; with it, it takes
about twice as many iterations to converge. We measure the train–val gap with and without dropout:
the training error of the final weights on the training images (eval mode, centre crop, no
dropout — the honest overfitting measure, not the running error under dropout) against the
validation error, and the per-epoch curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alexnet.engine.evaluate import topk_correct
from alexnet.experiments.ablation import sweep_note
from alexnet.experiments.runner import Runner, Variant, aggregate, pm
from alexnet.experiments.stats import welch
from alexnet.report.figures import plot_bars, plot_series
from alexnet.report.tables import markdown_table

TITLE = "dropout and overfitting (§4.2)"
CLAIM = ("Without dropout, our network exhibits substantial overfitting. Dropout roughly doubles the number of "
         "iterations required to converge (§4.2).")
# Quick scale: a small training set (1,000 images) for 18 epochs, the last two at a tenth of the
# rate, so that the network without dropout has the time to overfit; validation every 3 epochs for
# the curves. Two arms × (2 rates on seed 0 + seeds 1, 2 at the chosen rate) = 8 runs.
QUICK: dict[str, Any] = {"epochs": 18, "batch_size": 64, "train_subset": 1000, "eval_every": 3,
                         "schedule": "step", "step_epochs": [16]}
# Medium scale (Fashion-MNIST, 2 CPU cores): 5,000 training images for 10 epochs at batch 128, the
# last at a tenth of the rate, validation every 5 epochs: 10 runs, about 25 minutes (``--plan``).
MEDIUM: dict[str, Any] = {"epochs": 10, "batch_size": 128, "train_subset": 5000, "eval_every": 5,
                          "schedule": "step", "step_epochs": [9], "max_steps_per_epoch": 0}


def run(runner: Runner) -> Path:
    model = runner.main_model()
    base = runner.base_config(model, QUICK, MEDIUM)
    limit = int(base.get("train_subset") or 0)

    def measure(r: dict[str, Any]) -> None:
        runner.add_val_halves(r)
        probs, labels = runner.predict(r["run"], "train", limit=limit)
        c1, c5 = topk_correct(probs, labels)
        n = max(1, len(labels))
        r["train_eval_top1_err"] = 1 - c1 / n
        r["train_eval_top5_err"] = 1 - c5 / n
        r["gap_top1"] = r["report_top1_err"] - r["train_eval_top1_err"]

    # The paper's network has dropout 0.5 on fc6 and fc7; the CIFAR net (one FC layer) has none by
    # default, so the dropout arm puts p = 0.5 on the classifier's input.
    arms = [Variant("dropout-0.5", {"model_options": {"dropout": 0.5}}, {"dropout": 0.5}),
            Variant("no-dropout", {"model_options": {"dropout": 0.0}}, {"dropout": 0.0})]
    sweep = runner.sweep(base, arms, measure=measure)
    rows = sweep.rows
    keys = ["report_top1_err", "report_top5_err", "train_eval_top1_err", "gap_top1", "train_top1_err", "train_loss"]
    agg = aggregate(sweep.chosen(), keys, by="arm")
    # The paper: without dropout, a larger gap (+) and a higher validation error (+).
    gap = welch(sweep.values("dropout-0.5", "gap_top1"), sweep.values("no-dropout", "gap_top1"))
    val = welch(sweep.values("dropout-0.5", "report_top1_err"), sweep.values("no-dropout", "report_top1_err"))
    for r in rows:
        if r["arm"] == "no-dropout":
            r["delta_gap_vs_dropout"], r["delta_gap_ci95"] = gap.diff, [gap.low, gap.high] if gap.tested else None
            r["delta_top1_vs_dropout"], r["delta_top1_ci95"] = val.diff, [val.low, val.high] if val.tested else None
            r["verdict"] = gap.verdict(1.0)
            r["delta_gap_mde"], r["reference"] = gap.mde, "dropout-0.5"
            r["paper"] = "a larger train-val gap without dropout ('substantial overfitting')"
    table = [{"arm": a["arm"], "rate": sweep.best[a["arm"]],
              "train err (eval mode)": pm(a["train_eval_top1_err_mean"], a["train_eval_top1_err_std"]),
              "val top-1 err": pm(a["report_top1_err_mean"], a["report_top1_err_std"]),
              "val top-5 err": pm(a["report_top5_err_mean"], a["report_top5_err_std"]),
              "gap (val − train)": pm(a["gap_top1_mean"], a["gap_top1_std"]),
              "running train err, last epoch": pm(a["train_top1_err_mean"], a["train_top1_err_std"]),
              "seeds": a["n"]} for a in agg]
    diffs = [{"": "gap (val − train), no-dropout − dropout", "Δ [95% CI], points": gap.text(), "verdict": gap.verdict(1.0),
              "paper": "larger without dropout ('substantial overfitting')"},
             {"": "val top-1 error, no-dropout − dropout", "Δ [95% CI], points": val.text(), "verdict": val.verdict(None),
              "paper": "—"}]
    s0 = runner.seeds[0]
    series: dict[str, list[tuple[float, float]]] = {}
    for r in sweep.chosen():
        if r["seed"] != s0:
            continue
        series[f"{r['arm']} train (running)"] = [(m["epoch"], m["train_top1_err"]) for m in r["_metrics"]]
        series[f"{r['arm']} val"] = [(m["epoch"], m["val_top1_err"]) for m in r["_metrics"] if m.get("val_top1_err") is not None]
    curves = plot_series(series, runner.out / "curves.png", xlabel="epochs", ylabel="top-1 error rate",
                         title=f"With and without dropout (seed {s0}, each at its chosen rate)")
    bar_rows = [{"arm": a["arm"], "gap": a["gap_top1_mean"], "sd": a["gap_top1_std"]} for a in agg]
    gap_png = plot_bars(bar_rows, "arm", "gap", runner.out / "gap.png", yerr="sd",
                        ylabel="val − train top-1 error (fraction)", title="Overfitting: validation minus training error")
    sections = ["## Result\n\nMean ± std over the seeds, each arm at its chosen learning rate; validation errors on the "
                "report half of the validation images.\n\n" + markdown_table(table).rstrip(),
                "Differences with Welch's 95% confidence interval and p-value (*not resolved at this scale* when the interval "
                "contains 0):\n\n" + markdown_table(diffs).rstrip(),
                "The paper gives no number for the gap; its claims are the direction (a larger gap without dropout) "
                "and slower convergence with dropout (a higher running training error at the same epoch).",
                sweep_note(runner, base, sweep)]
    notes = ["Training error (eval mode) is measured on the training images used (the first "
             f"{limit or 'all'}), centre crop, dropout off; the running error is the one logged during training, "
             "with dropout and augmentation on."]
    if model == "alexnet-cifar":
        notes.append("alexnet-cifar has a single FC layer: dropout p = 0.5 is applied to its input (the paper "
                     "applies it to the outputs of fc6 and fc7 of its network).")
    if runner.scale == "medium":
        notes.append(f"Medium scale: a {limit:,}-image subset for {base['epochs']} epochs, a three-rate sweep extended at "
                     f"an edge that wins, {len(runner.seeds)} seeds.")
    elif runner.scale != "full":
        notes.append(f"Quick/test scale: a 1,000-image subset so that overfitting shows within minutes; a two-rate sweep "
                     f"and {len(runner.seeds)} seeds.")
    runner.write_results(rows)
    return runner.write_report(title=TITLE, claim=CLAIM, sections=sections, base=base, rows=rows,
                               figures=[curves, gap_png], notes=notes,
                               row_columns=["variant", "seed", "lr", "chosen", "train_eval_top1_err", "report_top1_err",
                                            "report_top5_err", "gap_top1", "train_top1_err", "epochs", "time_s"])
