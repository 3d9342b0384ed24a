"""Loader throughput against torchvision's reference recipe, at several worker counts.

    python benchmarks/data_loader.py                         # workers 1 and 2, CUDA if available
    python benchmarks/data_loader.py --workers 1 2 --device cpu
    python benchmarks/data_loader.py --workers 15 --decode auto   # a 16-core GPU machine
    python benchmarks/data_loader.py --images 720                 # a small dataset: timing spans epochs

Builds one real-photo 256×256 JPEG dataset (scikit-image photos, q90) and its image-folder copy,
then runs ``alexnet bench data`` on them once per worker count (see alexnet/commands/bench.py for
what is timed). Writes benchmarks/results/data-<cpu or gpu>-<date>.json with the machine (CPU
model, cores, load), versions, date and git SHA.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from alexnet.commands import bench
from alexnet.environment import environment

ROOT = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default=None)
    p.add_argument("--decode", choices=["cpu", "cuda", "auto"], default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--prepare-images", type=int, default=64)
    p.add_argument("--images", type=int, default=0,
                   help="dataset size (default: enough that no timing spans an epoch); small sizes time epoch restarts")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. machine shared with other jobs)")
    p.add_argument("--out", default=str(ROOT / "results"))
    args = p.parse_args()

    machine = environment(args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-") as work:
        # One photo set large enough that no worker count's timing spans an epoch.
        warm = 2 * max(args.workers) + 1
        n = args.images or (warm + args.batches + 1) * args.batch_size
        for i, w in enumerate(args.workers):
            ns = argparse.Namespace(data=None, make_photos=n, work_dir=work, workers=w, device=args.device,
                                    decode=args.decode, batch_size=args.batch_size, batches=args.batches, warmup=None,
                                    uint8=True, prepare_images=args.prepare_images if i == 0 else 0, seed=0)
            row = bench.run_data(ns)
            print(json.dumps(row), flush=True)
            rows.append(row)
    kind = re.sub(r"[^a-z0-9]+", "-", (machine["cuda_device"] or machine["processor"] or "cpu").lower()).strip("-")[:40]
    size = f"-{args.images}img" if args.images else ""
    out = Path(args.out) / f"data-{kind}{size}-{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "bench data", "note": args.note, **machine,
                               "config": vars(args), "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
