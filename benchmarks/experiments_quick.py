"""Rerun every experiment at one scale, one after another, and copy what each wrote (report.md,
results.json, protocol.json, provenance.json, any other JSON it writes beside them, the plots) with
its console output and wall time into benchmarks/results/experiments/NAME/ (quick, the built-in data) or
benchmarks/results/experiments-medium/NAME/ (medium, e.g. Fashion-MNIST) — the files the documentation (docs/experiments.md) cites.

    PYTHONPATH=src python benchmarks/experiments_quick.py [NAME ...] [--work DIR]
    PYTHONPATH=src python benchmarks/experiments_quick.py --scale medium --data /path/to/fashion-mnist [NAME ...]

At the medium scale relu-vs-tanh runs with ``--threshold 0.125`` on Fashion-MNIST (the rule stated in
alexnet.experiments.relu_vs_tanh). Results are committed from a clean tree: a checkout with changes to
tracked files is refused (``--allow-dirty`` to try it anyway; its reports then say so). The run
folders stay under --work, so an interrupted invocation resumes where it stopped.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from alexnet.files import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["relu-vs-tanh", "lrn", "pooling", "towers", "depth", "dropout", "augmentation", "baselines", "ensemble",
         "data-scale"]


def kept(out: Path) -> list[Path]:
    """What is committed of an experiment's folder: its report and every file it wrote at the top
    (results, protocol, provenance and any other JSON, such as data-scale's crossings; the plots),
    not its runs."""
    return [f for f in sorted(out.iterdir()) if f.is_file() and (f.name == "report.md" or f.suffix in (".json", ".png"))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=ORDER, help=f"experiments (default: all ten: {' '.join(ORDER)})")
    p.add_argument("--work", default=None,
                   help="where the experiment folders (with their runs) live (default: under the temp folder)")
    p.add_argument("--scale", choices=["quick", "medium"], default="quick")
    p.add_argument("--data", default="synthetic", help="'synthetic' (default) or a prepared dataset folder")
    p.add_argument("--allow-dirty", action="store_true", help="run from a checkout with uncommitted changes")
    args = p.parse_args()
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    if dirty and not args.allow_dirty:
        sys.stderr.write(f"{ROOT}: uncommitted changes to tracked files; commit them first (results are committed "
                         "from a clean tree) or pass --allow-dirty\n")
        return 2
    work = Path(args.work or Path(tempfile.gettempdir()) / f"alexnet-exp-{args.scale}")
    results = ROOT / "benchmarks" / "results" / ("experiments" if args.scale == "quick" else f"experiments-{args.scale}")
    failed = []
    for name in args.names:
        out = work / name
        extra = ["--data", args.data] if args.data != "synthetic" else []
        if name == "relu-vs-tanh" and args.scale == "medium" and "fashion" in args.data.lower():
            extra += ["--threshold", "0.125"]
        cmd = [sys.executable, "-m", "alexnet", "experiment", name, "--scale", args.scale, *extra, "--out", str(out)]
        started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - t0
        log = (f"$ alexnet experiment {name} --scale {args.scale} {' '.join(extra)} --out {out}   # started {started}, "
               f"git {sha}{' (dirty tree)' if dirty else ''}\n"
               + proc.stdout + proc.stderr + f"exit {proc.returncode}, wall time {wall:.0f} s\n")
        print(f"{name}: exit {proc.returncode}, {wall:.0f} s", flush=True)
        if proc.returncode != 0:
            failed.append(name)
            sys.stderr.write(log)
            continue
        dest = results / name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for f in kept(out):
            shutil.copy2(f, dest / f.name)
        atomic_write_text(dest / "console.log", log)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
