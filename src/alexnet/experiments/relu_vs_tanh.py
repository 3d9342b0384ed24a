"""Figure 1 (§3.1): how many epochs, and how much wall time, a four-layer CNN needs to reach 25%
training error with ReLUs against tanh units — no regularisation, each activation with its own best
learning rate from a small sweep. The paper: six times faster with ReLUs on CIFAR-10.

"Training error" is the error on the training batches as they are trained (the running error of the
epoch, as cuda-convnet reports it); an arm that never gets to 25% within the epochs run is reported
as *not reached*, and the ratio then becomes a bound, never a made-up number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from alexnet.experiments.runner import Runner, Variant, mean_std
from alexnet.report.figures import plot_series
from alexnet.report.tables import markdown_table

TITLE = "ReLU vs tanh: epochs to 25% training error (Figure 1)"
CLAIM = ("A four-layer convolutional network with ReLUs reaches 25% training error on CIFAR-10 six times faster "
         "than the same network with tanh units (no regularisation, each with its best learning rate; §3.1, Figure 1).")
THRESHOLD = 0.25
PAPER_RATIO = 6.0
ACTIVATIONS = ("relu", "tanh")
# Learning-rate sweeps (the paper's rule; constant rate, as Figure 1 compares raw speed).
SWEEP_FULL = (0.005, 0.01, 0.02, 0.05)
SWEEP_QUICK = (0.01, 0.02)
# Quick scale on the built-in data: a 500-image subset, batches of 32, 25 epochs, validation only at
# the end (Figure 1 is about training error). Without LRN this net's ReLU arm dies at these rates.
QUICK: dict[str, Any] = {"epochs": 25, "batch_size": 32, "train_subset": 500, "eval_every": 1000}
# No regularisation (Figure 1): no weight decay, no dropout, no augmentation beyond the centre crop
# needed to fit the input, a constant learning rate.
NO_REGULARISATION: dict[str, Any] = {"weight_decay": 0.0, "random_crop": False, "flip": False, "pca_std": 0.0,
                                     "schedule": "constant", "crop_padding": 0, "label_smoothing": 0.0}


def epochs_to_reach(metrics: Sequence[Mapping[str, Any]], threshold: float = THRESHOLD) -> tuple[int | None, float | None]:
    """The first epoch whose training error is at most ``threshold`` and the training wall time up
    to its end; (None, None) when no epoch gets there."""
    for r in metrics:
        err = r.get("train_top1_err")
        if err is not None and err <= threshold:
            return int(r["epoch"]), (float(r["time_s"]) if r.get("time_s") is not None else None)
    return None, None


def speedup(relu: float | None, tanh: float | None, budget_relu: float, budget_tanh: float) -> dict[str, Any]:
    """tanh's cost over ReLU's (epochs or seconds). An arm that did not reach the threshold spent at
    least its whole budget without getting there, so:

    - both reached: the ratio itself (``kind`` "exact");
    - only ReLU reached: tanh needs more than its budget, the ratio is > budget_tanh / relu ("lower");
    - only tanh reached: the ratio is < tanh / budget_relu ("upper");
    - neither: nothing can be said ("none").
    """
    if relu is not None and tanh is not None:
        v = tanh / relu if relu > 0 else math.inf
        return {"ratio": v, "kind": "exact", "text": f"{v:.2f}×"}
    if relu is not None:
        v = budget_tanh / relu if relu > 0 else math.inf
        return {"ratio": v, "kind": "lower", "text": f"> {v:.2f}× (tanh did not reach it)"}
    if tanh is not None:
        v = tanh / budget_relu
        return {"ratio": v, "kind": "upper", "text": f"< {v:.2f}× (ReLU did not reach it)"}
    return {"ratio": None, "kind": "none", "text": "— (neither reached it)"}


def _best_lr(rows: Sequence[dict[str, Any]], activation: str) -> float:
    """The learning rate that reaches the threshold in the fewest epochs (mean over seeds; a seed
    that never reaches it counts as infinitely slow); ties and never-reached go to the lowest final
    training error."""
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for r in rows:
        if r["activation"] == activation:
            by_lr.setdefault(r["lr"], []).append(r)

    def key(lr: float) -> tuple[float, float]:
        rs = by_lr[lr]
        ep = [r["epochs_to_25"] if r["epochs_to_25"] is not None else math.inf for r in rs]
        final, _, _ = mean_std(r["train_top1_err"] for r in rs)
        return sum(ep) / len(ep), final if final is not None else math.inf

    return min(by_lr, key=key)


def run(runner: Runner) -> Path:
    model = runner.main_model()
    overrides = dict(NO_REGULARISATION)
    if model == "alexnet":
        overrides["model_options"] = {"dropout": 0.0}
        overrides["eval_every"] = 1000  # Figure 1 needs training error only
    base = runner.base_config(model, QUICK, **overrides)
    sweep = SWEEP_FULL if runner.scale == "full" else SWEEP_QUICK
    variants = [Variant(f"{a}-lr{lr:g}", {"model_options": {"activation": a}, "lr": lr}, {"activation": a, "lr": lr})
                for a in ACTIVATIONS for lr in sweep]
    rows = runner.train_all(base, variants)
    for r in rows:
        r["epochs_to_25"], r["time_to_25_s"] = epochs_to_reach(r["_metrics"])
        r["reached"] = r["epochs_to_25"] is not None
    best = {a: _best_lr(rows, a) for a in ACTIVATIONS}
    for r in rows:
        r["best_lr"] = r["lr"] == best[r["activation"]]
    epochs_budget = int(base["epochs"])

    # Per activation at its best learning rate: mean over the seeds that reached the threshold.
    summary = []
    stats: dict[str, dict[str, Any]] = {}
    for a in ACTIVATIONS:
        rs = [r for r in rows if r["activation"] == a and r["best_lr"]]
        reached = [r for r in rs if r["reached"]]
        e_m, e_s, _ = mean_std(r["epochs_to_25"] for r in reached)
        t_m, t_s, _ = mean_std(r["time_to_25_s"] for r in reached)
        per_epoch, _, _ = mean_std(r["time_s"] / r["epochs"] for r in rs if r["time_s"])
        all_reached = len(reached) == len(rs)
        stats[a] = {"epochs": e_m if all_reached else None, "time": t_m if all_reached else None,
                    "time_budget": (per_epoch or 0.0) * epochs_budget}
        summary.append({
            "activation": a, "best lr": best[a],
            "epochs to 25% train err": (f"{e_m:.1f}" + (f" ± {e_s:.1f}" if e_s is not None else "")) if all_reached
            else f"not reached in {epochs_budget} epochs ({len(reached)}/{len(rs)} seeds reached it)",
            "time to 25% (s)": (f"{t_m:.1f}" + (f" ± {t_s:.1f}" if t_s is not None else "")) if all_reached else "not reached",
            "final train err": mean_std(r["train_top1_err"] for r in rs)[0],
            "val top-1 err": mean_std(r["top1_err"] for r in rs)[0],
        })
    ep_ratio = speedup(stats["relu"]["epochs"], stats["tanh"]["epochs"], epochs_budget, epochs_budget)
    t_ratio = speedup(stats["relu"]["time"], stats["tanh"]["time"], stats["relu"]["time_budget"], stats["tanh"]["time_budget"])
    for r in rows:
        r["ratio_epochs"], r["ratio_kind"] = ep_ratio["ratio"], ep_ratio["kind"]
        r["ratio_time"] = t_ratio["ratio"]

    # Figure 1: training error against epochs, the best rate of each activation (seed 0), and the sweep.
    def curve(r: dict[str, Any]) -> list[tuple[float, float]]:
        return [(m["epoch"], m["train_top1_err"]) for m in r["_metrics"] if m.get("train_top1_err") is not None]

    s0 = runner.seeds[0]
    fig1 = plot_series({f"{'ReLU' if r['activation'] == 'relu' else 'tanh'} (lr {r['lr']:g})": curve(r)
                        for r in rows if r["best_lr"] and r["seed"] == s0},
                       runner.out / "figure1.png", xlabel="epochs", ylabel="training error rate", hline=THRESHOLD,
                       title="Figure 1: training error, ReLU (solid) vs tanh (dashed)")
    sweep_png = plot_series({f"{r['activation']} lr {r['lr']:g}": curve(r) for r in rows if r["seed"] == s0},
                            runner.out / "sweep.png", xlabel="epochs", ylabel="training error rate", hline=THRESHOLD,
                            title="Learning-rate sweep (seed 0)")

    comparison = [
        {"": "epochs to 25%: tanh / ReLU", "ours": ep_ratio["text"], "paper": f"{PAPER_RATIO:g}× (CIFAR-10)"},
        {"": "wall time to 25%: tanh / ReLU", "ours": t_ratio["text"], "paper": "—"},
    ]
    sections = [
        "## Result\n\n" + markdown_table(comparison, ["", "ours", "paper"]).rstrip(),
        "Each activation at its best learning rate (swept over " + ", ".join(f"{x:g}" for x in sweep) + "):\n\n"
        + markdown_table(summary, formats={"final train err": "pct", "val top-1 err": "pct"}).rstrip(),
    ]
    notes = [
        "Training error is the running error over each epoch's training batches (as Figure 1); a seed that never "
        "reaches 25% within the epochs run is *not reached*, and the ratio becomes a bound (> or <).",
        "No regularisation (Figure 1): weight decay 0, no dropout, no crops/flips/colour noise, constant learning rate.",
    ]
    if runner.scale != "full":
        notes.append("Quick/test scale: a 500-image training subset for 25 epochs, so 25% training error is reached "
                     "by fitting that subset; the built-in shapes are not CIFAR-10 — compare the direction and order "
                     "of magnitude, not the number.")
    runner.write_results(rows)
    return runner.write_report(title=TITLE, claim=CLAIM, sections=sections, base=base, rows=rows,
                               figures=[fig1, sweep_png], notes=notes,
                               row_columns=["variant", "seed", "activation", "lr", "epochs_to_25", "time_to_25_s",
                                            "train_top1_err", "top1_err", "top5_err", "time_s", "best_lr"])
