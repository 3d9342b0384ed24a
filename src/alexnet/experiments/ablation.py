"""The common shape of the architecture ablations (LRN, pooling, towers, depth): a reference variant
and one or more changed variants, trained alike; top-1/top-5 error as mean ± std over seeds, the
difference to the reference beside the paper's difference, and a bar chart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from alexnet.experiments.runner import Runner, Variant, aggregate, pm
from alexnet.report.figures import plot_bars
from alexnet.report.tables import markdown_table

# Quick scale on the built-in data (alexnet-cifar, the cifar recipe with its augmentation): all
# 5,000 training images for 10 epochs (about a minute per run on 2 cores; the net is then well past
# its initial plateau, ~25% val error), validation every 5 epochs (the final epoch is always evaluated).
QUICK: dict[str, Any] = {"epochs": 10, "batch_size": 64, "train_subset": 0, "eval_every": 5}
# An arm that stays at chance at the base learning rate is retrained once at this fraction of it:
# without LRN's damping (k = 2 divides activations by ~1.7) the small net diverges at the rate the
# normalised net trains at; the paper tuned each of its nets' rates too.
RETRY_LR_FACTOR = 0.25


@dataclass
class PaperDiff:
    """The paper's change of error from the reference to ``variant`` (fractions; + = worse),
    on the data it was measured on."""

    variant: str
    top1: float | None
    top5: float | None
    data: str = "ILSVRC-2012 val"


def run_ablation(runner: Runner, *, title: str, claim: str, reference: Variant, others: Sequence[Variant],
                 paper: Sequence[PaperDiff], base: Mapping[str, Any], notes: Sequence[str] = (),
                 extra_sections: Sequence[str] = (), quick_note: str | None = None) -> Path:
    variants = [reference, *others]
    rows = runner.train_all(base, variants)
    chance = 1 - 1 / runner.data.num_classes
    rows, retried = retry_stuck(runner, base, variants, rows, chance)
    agg = aggregate(rows, ["top1_err", "top5_err", "train_top1_err", "time_s"])
    ref = next(a for a in agg if a["variant"] == reference.name)
    paper_by = {p.variant: p for p in paper}
    table = []
    for a in agg:
        d1 = d5 = None
        if a["variant"] != reference.name and a["top1_err_mean"] is not None and ref["top1_err_mean"] is not None:
            d1 = a["top1_err_mean"] - ref["top1_err_mean"]
            d5 = a["top5_err_mean"] - ref["top5_err_mean"]
        p = paper_by.get(a["variant"])
        table.append({
            "variant": a["variant"],
            "top-1 err": pm(a["top1_err_mean"], a["top1_err_std"]),
            "top-5 err": pm(a["top5_err_mean"], a["top5_err_std"]),
            "Δ top-1 vs " + reference.name: "reference" if a["variant"] == reference.name else (f"{100 * d1:+.2f}" if d1 is not None else "—"),
            "Δ top-5": "" if a["variant"] == reference.name else (f"{100 * d5:+.2f}" if d5 is not None else "—"),
            "paper Δ top-1 / top-5": "reference" if a["variant"] == reference.name else (
                f"{100 * p.top1:+.1f} / {100 * p.top5:+.1f} ({p.data})" if p and p.top1 is not None and p.top5 is not None
                else (f"{100 * p.top1:+.1f} / — ({p.data})" if p and p.top1 is not None else "—")),
            "runs": a["n"],
        })
        for r in rows:
            if r["variant"] == a["variant"] and d1 is not None:
                r["delta_top1_vs_reference"] = d1
                r["delta_top5_vs_reference"] = d5
    bars = plot_bars(agg, "variant", "top1_err_mean", runner.out / "top1.png", yerr="top1_err_std",
                     ylabel="validation top-1 error (%)", title=title)
    bars5 = plot_bars(agg, "variant", "top5_err_mean", runner.out / "top5.png", yerr="top5_err_std",
                      ylabel="validation top-5 error (%)", title=title)
    sections = ["## Result\n\nΔ = variant − reference in percentage points (+ = worse), ours beside the paper's.\n\n"
                + markdown_table(table).rstrip(), *extra_sections]
    all_notes = list(notes)
    for name, (old_lr, new_lr) in retried.items():
        all_notes.insert(0, f"{name} stayed at chance level at lr {old_lr:g} (the loss diverged, then the ReLUs died); "
                         f"the table shows it retrained at lr {new_lr:g}, each arm at a rate at which it trains.")
    stuck = [a["variant"] for a in agg if a["top1_err_mean"] is not None and a["top1_err_mean"] >= chance - 0.01]
    if stuck and runner.scale != "test":
        all_notes.insert(0, f"**{', '.join(stuck)} stayed at chance level ({100 * chance:.0f}% top-1): that arm did not "
                         "train at this learning rate (e.g. dead ReLUs or divergence), so its difference measures a failed "
                         "run, not the paper's effect.** Try a lower learning rate for it.")
    if runner.scale != "full":
        subset = f"a {base['train_subset']:,}-image subset of the data" if base.get("train_subset") else "the data"
        all_notes.append(quick_note or f"Quick/test scale: {base['epochs']} epochs on {subset} with one seed; differences "
                         "of a point or two are within seed noise here — run without --quick (and with --seeds 3) on "
                         "real data for numbers to set beside the paper's.")
    runner.write_results(rows)
    return runner.write_report(title=title, claim=claim, sections=sections, base=base, rows=rows,
                               figures=[bars, bars5], notes=all_notes)


def retry_stuck(runner: Runner, base: Mapping[str, Any], variants: Sequence[Variant], rows: list[dict[str, Any]],
                chance: float) -> tuple[list[dict[str, Any]], dict[str, tuple[float, float]]]:
    """Retrain, once, at ``RETRY_LR_FACTOR`` × its learning rate, every variant whose runs all ended at
    chance-level validation error; its rows are replaced (``lr`` and ``retried_from_lr`` columns say so).
    Not at the test scale, whose few steps never leave chance."""
    if runner.scale == "test":
        return rows, {}
    retried: dict[str, tuple[float, float]] = {}
    out = list(rows)
    for v in variants:
        mine = [r for r in rows if r["variant"] == v.name]
        if not mine or not all(r["top1_err"] is not None and r["top1_err"] >= chance - 0.01 for r in mine):
            continue
        old_lr = float(v.overrides.get("lr", base["lr"]))
        new_lr = old_lr * RETRY_LR_FACTOR
        again = Variant(f"{v.name}-lr{new_lr:g}", {**v.overrides, "lr": new_lr}, {**v.fields, "lr": new_lr, "retried_from_lr": old_lr})
        new_rows = runner.train_all(base, [again])
        for r in new_rows:
            r["variant"] = v.name  # the same arm, at a rate at which it trains
        out = [r for r in out if r["variant"] != v.name] + new_rows
        retried[v.name] = (old_lr, new_lr)
    order = {v.name: i for i, v in enumerate(variants)}
    out.sort(key=lambda r: (r["seed"], order.get(r["variant"], len(order))))
    return out, retried
