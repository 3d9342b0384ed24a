"""Time `alexnet demo` end to end (a cold run: the built-in data is rebuilt) once per seed, and
record the spread of its final error over the seeds beside the evidence: machine, versions, git
SHA, date, and the load average before and after (other processes on the machine inflate the
wall time, not the error).

    python benchmarks/demo_time.py [--seeds 0 1 2] [--jobs 1] [--threads N] [--out benchmarks/results]

``--jobs J`` runs J seeds at once (for the error band on a busy machine; their wall times then
measure the sharing, not the demo); ``--threads N`` sets OMP_NUM_THREADS for each demo process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alexnet.engine.run_folder import read_eval, read_metrics
from alexnet.environment import environment
from alexnet.perf.results import results_path, write_results

ERRORS = ("val_top1_err_center", "val_top5_err_center", "val_top1_err_ten_crop", "val_top5_err_ten_crop")


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation (0 for one row), min and max of each error and the wall time."""
    out = {}
    for key in (*ERRORS, "wall_s"):
        vals = [float(r[key]) for r in rows]
        out[key] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "min": min(vals), "max": max(vals)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one cold demo run per seed (default: 0)")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once (default 1: wall times measure the demo)")
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for each demo process (default: unset)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    env0 = environment()
    load_before = os.getloadavg()
    rows = []
    extra = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    with tempfile.TemporaryDirectory() as tmp:
        pending = list(args.seeds)
        running: list[tuple[int, subprocess.Popen, float]] = []
        while pending or running:
            while pending and len(running) < args.jobs:
                seed = pending.pop(0)
                d = Path(tmp) / f"seed{seed}"
                d.mkdir()
                env = {**os.environ, **extra, "ALEXNET_CACHE": str(d / "cache")}  # cold: data built inside the timing
                cmd = [sys.executable, "-m", "alexnet", "demo", "--out", str(d / "demo"), "--no-progress", "--seed", str(seed)]
                with open(d / "console.log", "w") as log:
                    running.append((seed, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), time.time()))
            done = [r for r in running if r[1].poll() is not None]
            if not done:
                time.sleep(0.5)
                continue
            seed, proc, t0 = done[0]
            running.remove(done[0])
            wall = time.time() - t0
            if proc.returncode != 0:
                print((Path(tmp) / f"seed{seed}" / "console.log").read_text(), file=sys.stderr)
                for _, other, _ in running:
                    other.kill()
                    other.wait()
                return 1
            d = Path(tmp) / f"seed{seed}" / "demo"
            ev, metrics = read_eval(d), read_metrics(d)
            rows.append({"seed": seed, "wall_s": round(wall, 1), "epochs": len(metrics), "train_img_per_s": round(metrics[-1]["img_per_s"]),
                         "val_top1_err_center": ev["center"]["top1_err"], "val_top5_err_center": ev["center"]["top5_err"],
                         "val_top1_err_ten_crop": ev["ten_crop"]["top1_err"], "val_top5_err_ten_crop": ev["ten_crop"]["top5_err"],
                         "val_top1_err_per_epoch": [m.get("val_top1_err") for m in metrics],
                         "lr_per_epoch": [m["lr"] for m in metrics]})
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("_per_epoch")}), flush=True)
    result = {"benchmark": "demo", "command": "alexnet demo --seed S", "environment": env0,
              "jobs": args.jobs, "omp_num_threads": args.threads or None,
              "load_average_1_5_15min": {"before": [round(x, 2) for x in load_before],
                                         "after": [round(x, 2) for x in os.getloadavg()]},
              "rows": rows, "summary": summarise(rows)}
    for key, s in result["summary"].items():
        print(f"{key}: {s['mean']:.4f} ± {s['std']:.4f} (min {s['min']:.4f}, max {s['max']:.4f}) over {len(rows)} seed(s)")
    path = write_results(results_path(args.out, "demo", env0), result, env0)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
