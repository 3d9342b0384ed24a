"""The results table of several experiments, generated from what they wrote (``results.json``,
``protocol.json``, ``provenance.json`` in each folder): one line per comparison,

    claim (§) | the paper's number | ours (mean ± std, Δ with its 95% interval, n seeds) | verdict

so that the documentation's table is never typed by hand. ``python -m alexnet.experiments.summary DIR ...``
prints it (Markdown); a DIR that holds experiment folders (``benchmarks/results/experiments-medium``)
stands for those of them named after an experiment (:func:`experiment_folders`), so a folder added there
joins the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from alexnet.report.tables import markdown_table, mean_std, pm

# The claim each experiment tests (§) and the paper's number, for the table's first two columns.
CLAIMS: dict[str, tuple[str, str]] = {
    "relu-vs-tanh": ("ReLU trains faster than tanh (§3.1, Figure 1)", "6× fewer epochs to 25% training error (CIFAR-10)"),
    "lrn": ("response normalisation helps (§3.3)", "−1.4 / −1.2 top-1 / top-5; CIFAR-10 13% → 11%"),
    "pooling": ("overlapping pooling helps (§3.4)", "−0.4 / −0.3 top-1 / top-5"),
    "towers": ("two towers beat one of half the kernels (§3.2)", "−1.7 / −1.2 top-1 / top-5"),
    "depth": ("removing a middle conv layer hurts (§7)", "about +2 top-1"),
    "dropout": ("without dropout, substantial overfitting (§4.2)", "a larger train–val gap without it"),
    "augmentation": ("augmentation fights overfitting; PCA noise helps (§4.1)", "PCA noise −1 top-1; none: overfitting"),
    "baselines": ("CNNs beat hand-crafted features + SVMs (Tables 1–2)", "SIFT + FVs 26.2% vs CNNs 15.3% top-5"),
    "ensemble": ("averaging CNNs helps (§6, Table 2)", "5 CNNs vs 1: −2.6 / −1.8 top-1 / top-5"),
}


def _pts(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.2f}"


def _delta(d: float | None, ci: Sequence[float | None] | None, mde: float | None, within: bool) -> str:
    if d is None:
        return "—"
    s = _pts(d)
    if ci and ci[0] is not None and ci[1] is not None:
        s += f" [{_pts(ci[0])}, {_pts(ci[1])}]"
    if within and mde is not None:
        s += f", MDE {100 * mde:.2f}"
    return s


def lines(folder: str | Path) -> list[dict[str, Any]]:
    """The table lines of one experiment folder."""
    folder = Path(folder)
    rows: list[dict[str, Any]] = json.loads((folder / "results.json").read_text())
    proto = json.loads((folder / "protocol.json").read_text()) if (folder / "protocol.json").is_file() else {}
    prov = json.loads((folder / "provenance.json").read_text()) if (folder / "provenance.json").is_file() else {}
    name = proto.get("experiment") or folder.name
    claim, paper = CLAIMS.get(name, (name, "—"))
    scale = proto.get("scale", "?")
    sha = (prov.get("shas") or ["?"])[0][:12] if prov.get("citable") else "not citable (see provenance.json)"
    tag = f"`{name}`, {scale}, git {sha}"
    out: list[dict[str, Any]] = []

    def line(ours: str, verdict: str, paper_text: str | None = None) -> None:
        out.append({"claim (§)": f"{claim} — {tag}", "the paper": paper_text or paper, "ours": ours,
                    "verdict": verdict or "—"})

    chosen = [r for r in rows if r.get("chosen", True)]
    key = "report_top1_err" if any("report_top1_err" in r for r in chosen) else "top1_err"
    if any("delta_top1_vs_reference" in r for r in chosen):  # the ablations and the baselines
        arms: dict[str, list[Mapping[str, Any]]] = {}
        for r in chosen:
            arms.setdefault(str(r.get("arm", r.get("variant"))), []).append(r)
        for arm, rs in arms.items():
            r0 = rs[0]
            if "delta_top1_vs_reference" not in r0 or r0.get("reference") is None:
                continue
            ref = arms.get(str(r0["reference"]), [])
            m, s, n = mean_std(r.get(key) for r in rs)
            rm, rsd, rn = mean_std(r.get(key) for r in ref)
            within = r0.get("delta_top1_ci95") is None or r0["delta_top1_ci95"][0] <= 0 <= r0["delta_top1_ci95"][1]
            line(f"{arm} {pm(m, s)} vs {r0['reference']} {pm(rm, rsd)} top-1; Δ "
                 f"{_delta(r0['delta_top1_vs_reference'], r0.get('delta_top1_ci95'), r0.get('delta_top1_mde'), within)}"
                 f" points; n = {n}, {rn} seeds", str(r0.get("verdict")), r0.get("paper"))
    elif any("delta_gap_vs_dropout" in r for r in chosen):
        r0 = next(r for r in chosen if "delta_gap_vs_dropout" in r)
        gaps = {a: mean_std(r.get("gap_top1") for r in chosen if r.get("arm") == a) for a in ("dropout-0.5", "no-dropout")}
        ci = r0.get("delta_gap_ci95")
        within = ci is None or ci[0] <= 0 <= ci[1]
        line(f"gap without {pm(*gaps['no-dropout'][:2])} vs with {pm(*gaps['dropout-0.5'][:2])}; Δ "
             f"{_delta(r0['delta_gap_vs_dropout'], ci, r0.get('delta_gap_mde'), within)} points; "
             f"n = {gaps['no-dropout'][2]}, {gaps['dropout-0.5'][2]} seeds", str(r0.get("verdict")))
    elif any("gain_top1" in r for r in rows):
        full = next(r for r in rows if "gain_top1" in r)
        single = [r for r in rows if r.get("nets") == 1]
        m, s, n = mean_std(r.get("top1_err") for r in single)
        ci = full.get("gain_top1_ci95")
        within = ci is None or ci[0] <= 0 <= ci[1]
        line(f"one net {pm(m, s)}, average of {full['nets']} {pm(full['top1_err'], None)} top-1; gain "
             f"{_delta(full['gain_top1'], ci, full.get('gain_top1_mde'), within)} points; {n} nets",
             str(full.get("verdict")))
    elif any("ratio_epochs" in r for r in rows):
        r0 = rows[0]
        thr = r0.get("threshold", 0.25)
        if r0.get("ratio_epochs_per_seed_mean") is not None:
            sd = r0.get("ratio_epochs_per_seed_std")
            ours = f"{r0['ratio_epochs_per_seed_mean']:.2f}" + (f" ± {sd:.2f}" if sd is not None else "") + "×"
        elif r0.get("ratio_epochs") is not None:
            ours = {"lower": "> ", "upper": "< "}.get(str(r0.get("ratio_kind")), "") + f"{r0['ratio_epochs']:.2f}×"
        else:
            ours = "not measured (neither reached the threshold)"
        seeds = len({r["seed"] for r in rows if r.get("chosen")})
        ci = r0.get("ratio_ci95")
        ours += f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        line(f"tanh / ReLU epochs to {100 * thr:g}% training error: {ours}; {seeds} seeds", str(r0.get("verdict")))
    return out


def experiment_folders(root: str | Path) -> list[Path]:
    """The folders under ``root`` named after an experiment of :data:`CLAIMS` that hold a
    ``results.json``, in the order of :data:`CLAIMS` (others, e.g. a superseded run kept as
    ``relu-vs-tanh-10-epochs``, or ``data-scale`` with its own tables, are left out)."""
    root = Path(root)
    return [root / name for name in CLAIMS if (root / name / "results.json").is_file()]


def _expand(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return [folder] if (folder / "results.json").is_file() else experiment_folders(folder)


def table(folders: Sequence[str | Path]) -> str:
    """Markdown: the lines of every folder, in the order given."""
    return markdown_table([ln for f in folders for ln in lines(f)], ["claim (§)", "the paper", "ours", "verdict"])


def main(argv: Sequence[str] | None = None) -> int:
    folders = list(sys.argv[1:] if argv is None else argv)
    if not folders:
        print("usage: python -m alexnet.experiments.summary DIR [DIR ...]", file=sys.stderr)
        return 2
    expanded = [f for folder in folders for f in _expand(folder)]
    if not expanded:
        print(f"no results.json in {', '.join(map(str, folders))} or in experiment folders under it", file=sys.stderr)
        return 2
    print(table(expanded), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
