"""Loader throughput against torchvision's reference recipe, at several worker counts.

    python benchmarks/data_loader.py                         # workers 1 and 2, CUDA if available
    python benchmarks/data_loader.py --workers 1 2 --device cpu
    python benchmarks/data_loader.py --workers 15 --decode auto   # a 16-core GPU machine
    python benchmarks/data_loader.py --images 720                 # a small dataset: timing spans epochs

Builds one real-photo 256×256 JPEG dataset (scikit-image photos, q90) and its image-folder copy,
then times them once per worker count with :func:`alexnet.perf.loader.loader_vs_reference` (what
``alexnet bench data`` prints; see that module for what is timed). Writes
benchmarks/results/data-<cpu or gpu>-<date>.json with the machine (CPU model, cores, load),
versions, date and git SHA (:mod:`alexnet.perf.results`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from alexnet.environment import environment
from alexnet.perf.loader import loader_vs_reference
from alexnet.perf.results import results_path, slug, write_results

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
            # The photo set is built in ``work`` by the first call and reused; prepare is timed once.
            row = loader_vs_reference(make_photos=n, work_dir=work, workers=w, device=args.device, decode=args.decode,
                                      batch_size=args.batch_size, batches=args.batches,
                                      prepare_images=args.prepare_images if i == 0 else 0)
            print(json.dumps(row), flush=True)
            rows.append(row)
    kind = slug(machine["cuda_device"] or machine["processor"] or "cpu", 40)
    size = f"-{args.images}img" if args.images else ""
    out = write_results(results_path(args.out, f"data-{kind}{size}", machine),
                        {"benchmark": "bench data", "note": args.note, "config": vars(args), "rows": rows}, machine)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
