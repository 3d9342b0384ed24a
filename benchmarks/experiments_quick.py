"""Rerun every experiment's quick mode on the built-in data, one after another, and copy what each
wrote (report.md, results.json, the plots) with its console output and wall time into
benchmarks/results/experiments/NAME/ — the files the README's quick-mode table cites.

    PYTHONPATH=src python benchmarks/experiments_quick.py [NAME ...] [--work DIR]

The run folders stay under --work, so an interrupted invocation resumes where it stopped.
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

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["relu-vs-tanh", "lrn", "pooling", "towers", "depth", "dropout", "augmentation", "baselines", "ensemble",
         "data-scale"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=ORDER, help=f"experiments (default: all ten: {' '.join(ORDER)})")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "alexnet-exp-quick"),
                   help="where the experiment folders (with their runs) live (default: under the temp folder)")
    args = p.parse_args()
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    failed = []
    for name in args.names:
        out = Path(args.work) / name
        cmd = [sys.executable, "-m", "alexnet", "experiment", name, "--quick", "--out", str(out)]
        started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - t0
        log = (f"$ alexnet experiment {name} --quick --out {out}   # started {started}, git {sha}\n"
               + proc.stdout + proc.stderr + f"exit {proc.returncode}, wall time {wall:.0f} s\n")
        print(f"{name}: exit {proc.returncode}, {wall:.0f} s", flush=True)
        if proc.returncode != 0:
            failed.append(name)
            sys.stderr.write(log)
            continue
        dest = ROOT / "benchmarks" / "results" / "experiments" / name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for f in [out / "report.md", out / "results.json", *sorted(out.glob("*.png"))]:
            shutil.copy2(f, dest / f.name)
        (dest / "console.log").write_text(log)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
