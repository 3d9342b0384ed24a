"""Time `alexnet demo` end to end (a cold run: the built-in data is rebuilt) and record the
evidence beside the result: machine, versions, git SHA, date.

    python benchmarks/demo_time.py [--runs 1] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alexnet.environment import environment


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "ALEXNET_CACHE": str(Path(tmp) / "cache")}  # cold: data built inside the timing
            t0 = time.time()
            r = subprocess.run([sys.executable, "-m", "alexnet", "demo", "--out", str(Path(tmp) / "demo"), "--no-progress"],
                               env=env, capture_output=True, text=True)
            wall = time.time() - t0
            if r.returncode != 0:
                print(r.stdout, r.stderr, file=sys.stderr)
                return 1
            ev = json.loads((Path(tmp) / "demo" / "eval.json").read_text())
            metrics = [json.loads(l) for l in (Path(tmp) / "demo" / "metrics.jsonl").read_text().splitlines()]
        rows.append({"run": i, "wall_s": round(wall, 1), "epochs": len(metrics), "train_img_per_s": round(metrics[-1]["img_per_s"]),
                     "val_top1_err_center": ev["center"]["top1_err"], "val_top5_err_center": ev["center"]["top5_err"],
                     "val_top1_err_ten_crop": ev["ten_crop"]["top1_err"], "val_top5_err_ten_crop": ev["ten_crop"]["top5_err"]})
        print(json.dumps(rows[-1]))
    result = {"benchmark": "demo", "command": "alexnet demo", "environment": environment(), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"demo-{time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
