"""The common shape of the ablations (LRN, pooling, towers, depth, augmentation): a reference arm and
one or more changed arms, trained alike by :meth:`Runner.sweep` — the same learning-rate sweep, each
arm at its own best rate, the same epochs, schedule and seeds. The report gives top-1/top-5 error as
mean ± std over seeds, the difference to the reference with Welch's 95% interval (or "within seed
noise"), the paper's difference beside it, and bar charts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from alexnet.experiments.runner import Runner, Sweep, Variant, aggregate, pm
from alexnet.experiments.stats import seeds_to_resolve, welch
from alexnet.report.figures import plot_bars
from alexnet.report.tables import markdown_table

# Quick scale on the built-in data (alexnet-cifar, the cifar recipe with its augmentation): all
# 5,000 training images for 4 epochs, the last at a tenth of the rate (the same step schedule for
# every arm, so the final error is not the noise of whichever step the run ended on); validation at
# the end. With the sweep (2 rates on seed 0, seeds 1 and 2 at each arm's chosen rate) a two-arm
# ablation trains 8 runs: about five minutes on 2 idle cores.
QUICK: dict[str, Any] = {"epochs": 4, "batch_size": 64, "train_subset": 0, "eval_every": 4,
                         "schedule": "step", "step_epochs": [3]}
# Medium scale (Fashion-MNIST on 2 CPU cores): 15,000 training images for 4 epochs at the paper's
# batch of 128, the last epoch at a tenth of the rate; validation (all 10,000 images) at the end. A
# two-arm ablation trains 10 runs (3 rates on the first seed, 2 more seeds at each arm's chosen rate),
# plus a run per rate a sweep adds at an edge: about 25 minutes at 450 images/s (``--plan``).
MEDIUM: dict[str, Any] = {"epochs": 4, "batch_size": 128, "train_subset": 15000, "eval_every": 4,
                          "schedule": "step", "step_epochs": [3], "max_steps_per_epoch": 0}


@dataclass
class PaperDiff:
    """The paper's change of error from the reference to ``variant`` (fractions; + = worse),
    on the data it was measured on."""

    variant: str
    top1: float | None
    top5: float | None
    # §2: most of the paper's experiments were on ILSVRC-2010 (the only version with test labels);
    # its ablation deltas do not say which set they were measured on.
    data: str = "ImageNet, set not stated"
    sign: float | None = None  # the direction where the paper gives no number (+1: the arm is worse)

    @property
    def direction(self) -> float | None:
        return self.top1 if self.top1 is not None else self.sign

    def text(self) -> str:
        if self.top1 is None and self.top5 is None and self.sign:
            return f"{'worse' if self.sign > 0 else 'better'} ({self.data})"
        return f"{_pts(self.top1)} / {_pts(self.top5)} ({self.data})"


def _pts(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}"


def compare_arms(sweep: Sweep, reference: str, paper: Sequence[PaperDiff] = (),
                 keys: Sequence[str] = ("report_top1_err", "report_top5_err")) -> list[dict[str, Any]]:
    """For every arm but ``reference``: Welch's test of arm − reference on each key over the seeds
    at each arm's chosen rate; the verdict uses the sign of the paper's top-1 difference."""
    paper_by = {p.variant: p for p in paper}
    out = []
    for arm in sweep.arms:
        if arm == reference:
            continue
        p = paper_by.get(arm)
        entry: dict[str, Any] = {"arm": arm, "reference": reference}
        for k in keys:
            d = welch(sweep.values(reference, k), sweep.values(arm, k))
            entry[k] = d
        entry["verdict"] = entry[keys[0]].verdict(p.direction if p else None)
        entry["paper"] = p.text() if p else None
        # Where the paper gives a size and ours is not resolved: the seeds its size would need here.
        d = entry[keys[0]]
        entry["seeds_for_paper_effect"] = (seeds_to_resolve(d, p.top1) if p is not None and p.top1 and d.within_noise
                                           else None)
        out.append(entry)
    return out


def annotate(rows: Sequence[dict[str, Any]], comparisons: Sequence[Mapping[str, Any]],
             keys: Sequence[str] = ("report_top1_err", "report_top5_err")) -> None:
    """Copy each comparison into its arm's rows (results.json carries the statistics)."""
    by = {c["arm"]: c for c in comparisons}
    for r in rows:
        c = by.get(r["arm"])
        if c is None:
            continue
        for k in keys:
            d = c[k]
            name = k.replace("report_", "").replace("_err", "")
            r[f"delta_{name}_vs_reference"] = d.diff
            r[f"delta_{name}_ci95"] = [d.low, d.high] if d.tested else None
            r[f"delta_{name}_welch_p"] = d.p
            r[f"delta_{name}_mde"] = d.mde
        r["verdict"] = c["verdict"]
        r["reference"] = c["reference"]
        r["paper"] = c.get("paper")
        r["seeds_for_paper_effect"] = c.get("seeds_for_paper_effect")


def sweep_note(runner: Runner, base: Mapping[str, Any], sweep: Sweep) -> str:
    return ("## Learning-rate sweep\n\n" + sweep.text() + " The selection half is every other validation image of each "
            "class; the tables above report the other half, so the reported error is not the one a rate was chosen on. "
            f"Every arm: the same {base['epochs']} epochs, schedule `{base.get('schedule')}`"
            + (f" (steps at epochs {base.get('step_epochs')})" if base.get("schedule") == "step" else "")
            + f", seeds {', '.join(map(str, runner.seeds))}.\n\nSelection-half top-1 error by rate (mean over the sweep "
            "seeds; the chosen rate in bold):\n\n" + sweep.table(lambda v: f"{100 * v:.2f}%"))


def run_ablation(runner: Runner, *, title: str, claim: str, reference: Variant, others: Sequence[Variant],
                 paper: Sequence[PaperDiff], base: Mapping[str, Any], notes: Sequence[str] = (),
                 extra_sections: Sequence[str] = (), quick_note: str | None = None) -> Path:
    arms = [reference, *others]
    sweep = runner.sweep(base, arms)
    rows = sweep.rows
    chosen = sweep.chosen()
    agg = aggregate(chosen, ["report_top1_err", "report_top5_err", "train_top1_err", "time_s"], by="arm")
    comparisons = compare_arms(sweep, reference.name, paper)
    annotate(rows, comparisons)
    by_cmp = {c["arm"]: c for c in comparisons}
    paper_by = {p.variant: p for p in paper}
    table = []
    for a in agg:
        name = a["arm"]
        c, p = by_cmp.get(name), paper_by.get(name)
        is_ref = name == reference.name
        table.append({
            "arm": name,
            "rate": sweep.best[name],
            "top-1 err": pm(a["report_top1_err_mean"], a["report_top1_err_std"]),
            "top-5 err": pm(a["report_top5_err_mean"], a["report_top5_err_std"]),
            f"Δ top-1 vs {reference.name} [95% CI]": "reference" if is_ref else c["report_top1_err"].text(),  # type: ignore[index]
            "Δ top-5 [95% CI]": "" if is_ref else c["report_top5_err"].text(),  # type: ignore[index]
            "verdict": "" if is_ref else c["verdict"],  # type: ignore[index]
            "paper Δ top-1 / top-5": "reference" if is_ref else (p.text() if p else "—"),
            "seeds": a["n"],
        })
    title_png = f"{title}\n(each arm at its chosen rate; ± std over {len(runner.seeds)} seeds)"
    # Keys ending in _err: plot_bars shows the fractions (and their error bars) in %.
    bar_rows = [{"arm": a["arm"], "top1_err": a["report_top1_err_mean"], "top1_sd": a["report_top1_err_std"],
                 "top5_err": a["report_top5_err_mean"], "top5_sd": a["report_top5_err_std"]} for a in agg]
    bars = plot_bars(bar_rows, "arm", "top1_err", runner.out / "top1.png", yerr="top1_sd",
                     ylabel="validation top-1 error (%), report half", title=title_png)
    bars5 = plot_bars(bar_rows, "arm", "top5_err", runner.out / "top5.png", yerr="top5_sd",
                      ylabel="validation top-5 error (%), report half", title=title_png)
    sections = ["## Result\n\nErrors on the report half of the validation images, mean ± std over the seeds, each arm at its "
                "chosen learning rate. Δ = arm − reference in percentage points (+ = worse) with Welch's 95% confidence "
                "interval and p-value; *not resolved at this scale* when the interval contains 0 (with the minimum detectable effect, MDE). The paper's Δ beside ours.\n\n"
                + markdown_table(table).rstrip(),
                sweep_note(runner, base, sweep), *extra_sections]
    all_notes = list(notes)
    for c in comparisons:
        if c.get("seeds_for_paper_effect"):
            d = c["report_top1_err"]
            all_notes.append(f"`{c['arm']}`: not resolved, MDE {100 * d.mde:.2f} points against the paper's "
                             f"{100 * abs(paper_by[c['arm']].top1):.1f}; at this spread about {c['seeds_for_paper_effect']} "
                             "seeds per arm would resolve an effect of the paper's size (rerun with --seeds K into a new --out).")
    if runner.scale in ("quick", "test"):
        subset = f"a {base['train_subset']:,}-image subset of the data" if base.get("train_subset") else "the data"
        all_notes.append(quick_note or f"Quick/test scale: {base['epochs']} epochs on {subset}, a two-rate sweep and "
                         f"{len(runner.seeds)} seeds; with so few seeds only large differences leave the seed noise — run "
                         "without --quick on real data for numbers to set beside the paper's.")
    runner.write_results(rows)
    return runner.write_report(title=title, claim=claim, sections=sections, base=base, rows=rows,
                               figures=[bars, bars5], notes=all_notes,
                               row_columns=["variant", "seed", "lr", "chosen", "select_top1_err", "report_top1_err",
                                            "report_top5_err", "train_top1_err", "epochs", "time_s"])
