"""§4.2: dropout. The paper: without dropout the network overfits substantially; with it, it takes
about twice as many iterations to converge. We measure the train–val gap with and without dropout:
the training error of the final weights on the training images (eval mode, centre crop, no
dropout — the honest overfitting measure, not the running error under dropout) against the
validation error, and the per-epoch curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alexnet.engine.evaluate import topk_correct
from alexnet.experiments.runner import Runner, Variant, aggregate, pm
from alexnet.report.figures import plot_bars, plot_series
from alexnet.report.tables import markdown_table

TITLE = "dropout and overfitting (§4.2)"
CLAIM = ("Without dropout, our network exhibits substantial overfitting. Dropout roughly doubles the number of "
         "iterations required to converge (§4.2).")
# Quick scale: a small training set (1,000 images) for 40 epochs, so that the network without dropout
# has the time to overfit; validation every 4 epochs for the curves.
QUICK: dict[str, Any] = {"epochs": 40, "batch_size": 64, "train_subset": 1000, "eval_every": 4}


def run(runner: Runner) -> Path:
    model = runner.main_model()
    base = runner.base_config(model, QUICK)
    # The paper's network has dropout 0.5 on fc6 and fc7; the CIFAR net (one FC layer) has none by
    # default, so the dropout arm puts p = 0.5 on the classifier's input.
    variants = [Variant("dropout-0.5", {"model_options": {"dropout": 0.5}}, {"dropout": 0.5}),
                Variant("no-dropout", {"model_options": {"dropout": 0.0}}, {"dropout": 0.0})]
    rows = runner.train_all(base, variants)
    limit = int(base.get("train_subset") or 0)
    for r in rows:
        probs, labels = runner.predict(r["run"], "train", limit=limit)
        c1, c5 = topk_correct(probs, labels)
        n = max(1, len(labels))
        r["train_eval_top1_err"] = 1 - c1 / n
        r["train_eval_top5_err"] = 1 - c5 / n
        r["gap_top1"] = r["top1_err"] - r["train_eval_top1_err"]
    agg = aggregate(rows, ["top1_err", "top5_err", "train_eval_top1_err", "gap_top1", "train_top1_err", "train_loss"])
    table = [{"variant": a["variant"], "train err (eval mode)": pm(a["train_eval_top1_err_mean"], a["train_eval_top1_err_std"]),
              "val top-1 err": pm(a["top1_err_mean"], a["top1_err_std"]),
              "val top-5 err": pm(a["top5_err_mean"], a["top5_err_std"]),
              "gap (val − train)": pm(a["gap_top1_mean"], a["gap_top1_std"]),
              "running train err, last epoch": pm(a["train_top1_err_mean"], a["train_top1_err_std"]),
              "runs": a["n"]} for a in agg]
    s0 = runner.seeds[0]
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["seed"] != s0:
            continue
        series[f"{r['variant']} train (running)"] = [(m["epoch"], m["train_top1_err"]) for m in r["_metrics"]]
        series[f"{r['variant']} val"] = [(m["epoch"], m["val_top1_err"]) for m in r["_metrics"] if m.get("val_top1_err") is not None]
    curves = plot_series(series, runner.out / "curves.png", xlabel="epochs", ylabel="top-1 error rate",
                         title="With and without dropout (seed 0)")
    gap = plot_bars(agg, "variant", "gap_top1_mean", runner.out / "gap.png", yerr="gap_top1_std",
                    ylabel="val − train top-1 error (points)", title="Overfitting: validation minus training error")
    sections = ["## Result\n\n" + markdown_table(table).rstrip(),
                "The paper gives no number for the gap; its claims are the direction (a larger gap without dropout) "
                "and slower convergence with dropout (a higher running training error at the same epoch)."]
    notes = ["Training error (eval mode) is measured on the training images used (the first "
             f"{limit or 'all'}), centre crop, dropout off; the running error is the one logged during training, "
             "with dropout and augmentation on."]
    if model == "alexnet-cifar":
        notes.append("alexnet-cifar has a single FC layer: dropout p = 0.5 is applied to its input (the paper "
                     "applies it to the outputs of fc6 and fc7 of its network).")
    if runner.scale != "full":
        notes.append("Quick/test scale: a 1,000-image subset so that overfitting shows within minutes.")
    runner.write_results(rows)
    return runner.write_report(title=TITLE, claim=CLAIM, sections=sections, base=base, rows=rows,
                               figures=[curves, gap], notes=notes,
                               row_columns=["variant", "seed", "train_eval_top1_err", "top1_err", "top5_err", "gap_top1",
                                            "train_top1_err", "epochs", "time_s"])
