"""Train the ``fashion`` recipe (or a variant of it: ``--set``, ``--model-opt``) on Fashion-MNIST once
per seed and score each run's last weights on the preparation's ``val`` split, centre crop, beside the
dataset's published table. ``val`` is the official test set when the data was prepared from the IDX
files as they are (the recipe's fixed step schedule never reads it, so nothing is selected on it), or a
held-out part of the training set under ``prepare --val-fraction``: the split a recipe search scores on,
the test set left out. The results file says which (``scored_on``; rows ``test_*`` or ``heldout_*``).
Records per-epoch errors, wall time, machine, versions, git SHA and load average.
Only the centre crop: at 32×32 (the nets' input size) §4.1's 10 crops are the centre crop and its
reflection, and ``evaluate --ten-crop`` refuses them. The runs stay in ``--work`` (a failed command
leaves its run and log there; a seed whose run folder exists is refused by ``train``).

    python benchmarks/fashion_mnist.py DATA --work DIR [--seeds 0 1 2] [--out benchmarks/results]
        [--set K=V ...] [--model-opt K=V ...] [--tag NAME]

``DATA``: ``alexnet prepare /usr/share/datasets/fashion-mnist --out DATA --size 32``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from alexnet.data.format import PreparedDataset
from alexnet.engine.run_folder import read_metrics
from alexnet.environment import environment
from alexnet.perf.results import results_path, write_results

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Xiao, Rasul & Vollgraf 2017 and the benchmark table of github.com/zalandoresearch/fashion-mnist:
# test accuracy of the 2-conv CNNs listed there, and the best HOG + SVM.
PUBLISHED = {"2-conv CNNs (range)": [0.876, 0.939], "HOG + SVM": 0.926}


def alexnet(*args: str, log: Path) -> str:
    """One CLI invocation; its stdout (the console goes to ``log`` too). Exits on failure."""
    with open(log, "a") as f:
        f.write(f"$ alexnet {' '.join(args)}\n")
        f.flush()
        p = subprocess.run([sys.executable, "-m", "alexnet", *args], stdout=subprocess.PIPE, stderr=f, text=True)
        f.write(p.stdout)
    if p.returncode:
        sys.exit(f"alexnet {args[0]} failed (exit {p.returncode}); see {log}")
    return p.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a prepared Fashion-MNIST folder")
    ap.add_argument("--work", required=True, help="where the run folders and their logs are kept")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--set", action="append", default=[], metavar="K=V", help="a config override of the recipe")
    ap.add_argument("--model-opt", action="append", default=[], metavar="K=V", help="a model option override")
    ap.add_argument("--tag", help="names the results file (fashion-mnist[-heldout]-TAG-DATE.json); needed with "
                    "overrides, so that two variants run on one day write two files")
    args = ap.parse_args()
    val = PreparedDataset(Path(args.data), "val")
    names = val.class_names
    if list(names) != CLASSES:
        print(f"fashion_mnist.py: {args.data}: its classes are not Fashion-MNIST's ({', '.join(names[:3])}, ...)", file=sys.stderr)
        return 2
    overrides = [("--set", kv) for kv in args.set] + [("--model-opt", kv) for kv in args.model_opt]
    if overrides and not args.tag:
        print("fashion_mnist.py: --set/--model-opt need --tag: the variant names its results file", file=sys.stderr)
        return 2
    # `prepare --val-fraction` records where val came from; without it val is the official test set
    heldout = "training set" in str(val.meta.get("source", {}).get("val", ""))
    split = "heldout" if heldout else "test"
    env0, load_before = environment(), os.getloadavg()
    stem = "-".join(["fashion-mnist"] + (["heldout"] if heldout else []) + ([args.tag] if args.tag else []))
    path = results_path(args.out, stem, env0)
    if path.exists():
        print(f"fashion_mnist.py: {path}: exists; a results file is never overwritten (another --tag, or move it)",
              file=sys.stderr)
        return 2
    rows = []
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        run, log = work / f"seed{seed}", work / f"seed{seed}.log"
        t0 = time.time()
        alexnet("train", "--recipe", "fashion", "--data", args.data, "--out", str(run), "--seed", str(seed),
                "--no-progress", *(x for pair in overrides for x in pair), log=log)
        wall = time.time() - t0
        centre = json.loads(alexnet("evaluate", str(run), "--json", "--quiet", log=log))
        metrics = read_metrics(run)
        rows.append({"seed": seed, "train_wall_s": round(wall, 1), "epochs": len(metrics),
                     f"{split}_top1_err_center": centre["top1_err"], f"{split}_accuracy_center": 1 - centre["top1_err"],
                     "train_img_per_s": round(metrics[-1]["img_per_s"]),
                     "val_top1_err_per_epoch": [m.get("val_top1_err") for m in metrics],
                     "train_top1_err_per_epoch": [m.get("train_top1_err") for m in metrics],
                     "lr_per_epoch": [m["lr"] for m in metrics], "console": log.read_text()})
        print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("_per_epoch") and k != "console"}), flush=True)
    flags = "".join(f" {flag} {kv}" for flag, kv in overrides)
    result = {"benchmark": stem, "command": f"alexnet train --recipe fashion{flags} --data DATA --seed S; "
              "alexnet evaluate RUN", "data": args.data, "scored_on": "held-out part of the training set" if heldout
              else "official test set", "overrides": [f"{flag} {kv}" for flag, kv in overrides],
              "published_test_accuracy": PUBLISHED,
              "load_average_1_5_15min": {"before": [round(x, 2) for x in load_before],
                                         "after": [round(x, 2) for x in os.getloadavg()]},
              "rows": rows}
    path = write_results(path, result, env0)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
