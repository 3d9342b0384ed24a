"""The CPU's limit and the training step, in one run on one machine: how far `alexnet train` is from
what the CPU can do for `alexnet-cifar`, and how far it moved from a baseline commit.

    PYTHONPATH=src python benchmarks/cpu_step.py                   # the full run (~10 min on 2 cores)
    PYTHONPATH=src python benchmarks/cpu_step.py --quick           # smoke run (seconds; no baseline)

Rows, all fp32 on the CPU with ``--threads`` threads (default: the machine's cores):

* **ceiling**: a large matmul (2048², ``alexnet.perf.ceiling.gemm_gflops``), and each conv layer of
  `alexnet-cifar` at its own shapes, forward + backward, NCHW and channels_last
  (``conv_layer_rates``), at batch 32 and 128.
* **plain loop**: the textbook PyTorch loop of the same network (``alexnet.models.create``) on
  in-memory random batches: NCHW, ``torch.optim.SGD``, no augmentation, no loader
  (``alexnet.perf.ceiling.plain_loop``).
* **train**: `alexnet train`'s step end to end from the prepared dataset — loader, §4.1
  augmentation, forward, backward, the paper's update — as the img/s that ``alexnet.engine.train.run``
  itself records for an epoch (metrics.jsonl), for (a) the demo recipe (``--recipe demo``, batch 32, the
  built-in data) and (b) batch 128 on 32×32 data (``--recipe cifar``, ``--data``: Fashion-MNIST
  prepared at 32×32, or the built-in data). Each run trains ``--epochs`` short epochs of ``--steps``
  steps; the last epoch's rate is the row's sample (the first pays the allocator's warm-up).
* **baseline** (``--baseline REF``, default 06a26dd): the same two `alexnet train` command lines run
  from a temporary ``git worktree`` of REF in a subprocess (another version of the package cannot be
  imported beside this one), alternated round by round with ours, so that both see the same load.
  Ours runs in this process through ``alexnet.engine.train.run``; each side uses its own recipe files.
  The ceiling and plain-loop rows are measured first, before ours' set-up changes this process's
  malloc (``keep_freed_cpu_memory``): they are PyTorch's defaults.

Each train row gives img/s (median of ``--rounds``), GFLOP/s from the FLOP count of one image
(``alexnet.perf.flops.flops_per_image``) and the fraction of the measured matmul ceiling; the baseline
rows add ours/baseline. Writes benchmarks/results/cpu-step-<date>.json with machine, versions, date,
git SHA (``alexnet.perf.results``) and the load average before and after: on a shared machine the
rates move with the load, the ratios of alternated rows much less.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from alexnet import config as config_mod
from alexnet import models
from alexnet.engine import train as engine_train
from alexnet.engine.run_folder import last_metrics
from alexnet.environment import environment
from alexnet.perf.ceiling import conv_layer_rates, fraction, gemm_gflops, plain_loop
from alexnet.perf.flops import flops_per_image
from alexnet.perf.results import results_path, write_results

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
MODEL = "alexnet-cifar"
SIZE = 32
FASHION = "/work/data/fashion-mnist"


def train_settings(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The two `alexnet train` settings: the demo recipe, and batch 128 on 32×32 data."""
    data128 = args.data if args.data else ("synthetic" if args.quick or not Path(FASHION).is_dir() else FASHION)
    return [{"name": "demo (batch 32, built-in data)", "recipe": "demo", "data": "synthetic", "batch_size": 32},
            {"name": f"batch 128, 32×32 ({'built-in data' if data128 == 'synthetic' else data128})", "recipe": "cifar",
             "data": data128, "batch_size": 128}]


def overrides(setting: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The fields both sides override: short epochs, a constant rate (the recipes' schedules refer to
    epochs these runs never reach; the rate does not change the work), no checkpoints beyond the
    epoch ends, the device and thread-free defaults otherwise."""
    return {"data": setting["data"], "model": MODEL, "batch_size": setting["batch_size"], "epochs": args.epochs,
            "max_steps_per_epoch": args.steps, "schedule": "constant", "eval_every": 1000, "device": "cpu",
            "progress": False, "seed": 0}


def ours(setting: dict[str, Any], args: argparse.Namespace, tmp: Path, i: int) -> float:
    """img/s of our `alexnet train` (this checkout, this process) for ``setting``: the rate
    ``engine.train.run`` records for its last epoch."""
    cfg = config_mod.resolve(setting["recipe"], overrides(setting, args), cuda=lambda d: False)
    out = tmp / f"ours-{i}"
    engine_train.run(cfg, out, log=lambda s: None)
    return float(last_metrics(out)["img_per_s"])


def baseline(setting: dict[str, Any], args: argparse.Namespace, tree: Path, tmp: Path, i: int) -> float:
    """img/s of the baseline checkout's `alexnet train` for ``setting``, in a subprocess."""
    out = tmp / f"base-{i}"
    sets = [f"{k}={v}" for k, v in overrides(setting, args).items()
            if k not in ("data", "model", "batch_size", "epochs", "device", "progress", "seed")]
    cmd = [sys.executable, "-m", "alexnet", "train", "--recipe", setting["recipe"], "--data", setting["data"],
           "--model", MODEL, "--batch-size", str(setting["batch_size"]), "--epochs", str(args.epochs), "--seed", "0",
           "--device", "cpu", "--no-progress", "--out", str(out), *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(args.threads)}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"baseline train failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return float(last_metrics(out)["img_per_s"])


def add_worktree(ref: str, where: Path) -> str:
    """A detached worktree of ``ref`` at ``where``; returns its full SHA."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(where), ref], check=True)
    return subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def summary(samples: list[float], flops: float, gemm: float) -> dict[str, Any]:
    med = statistics.median(samples)
    return {"img_per_s": round(med, 1), "img_per_s_rounds": [round(s, 1) for s in samples],
            "gflop_per_s": round(med * flops / 1e9, 1), "fraction_of_gemm": fraction(med, flops, gemm)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one round, no baseline unless --baseline is given")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (and OMP_NUM_THREADS of the baseline)")
    ap.add_argument("--baseline", default=None, help="git ref to compare with (default 06a26dd; 'none': no baseline)")
    ap.add_argument("--data", default=None, help=f"prepared 32×32 dataset for the batch-128 rows (default {FASHION} if present, else the built-in data)")
    ap.add_argument("--rounds", type=int, default=None, help="alternated rounds of each train row (default 3; --quick 1)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per train run (default 2; --quick 1)")
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch of a train run (default 60; --quick 2)")
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args()
    q = args.quick
    args.rounds = args.rounds or (1 if q else 3)
    args.epochs = args.epochs or (1 if q else 2)
    args.steps = args.steps or (2 if q else 60)
    ref = args.baseline or (None if q else "06a26dd")
    ref = None if ref == "none" else ref
    torch.set_num_threads(args.threads)
    env0 = environment("cpu")
    load_before = os.getloadavg()
    t_start = time.time()

    def build() -> torch.nn.Module:
        return models.create(MODEL, 10)

    flops = flops_per_image(build, SIZE)
    result: dict[str, Any] = {"benchmark": "cpu-step", "command": " ".join(["benchmarks/cpu_step.py", *sys.argv[1:]]),
                              "environment": env0, "threads": args.threads, "quick": q, "model": MODEL,
                              "gflop_per_image_fwd_bwd": round(flops / 1e9, 4)}
    gemm = gemm_gflops(256 if q else 2048, repeats=2 if q else 5)
    result["ceiling"] = {"gemm": gemm, "conv_layers": []}
    print(f"fp32 matmul {gemm['n']}²: {gemm['gflop_per_s']} GFLOP/s", flush=True)
    for batch in ((2,) if q else (32, 128)):
        for cl in (False, True):
            rows = conv_layer_rates(build, batch, SIZE, channels_last=cl, repeats=2 if q else 5, iters=1 if q else 3)
            for r in rows:
                r.update(batch=batch, fraction_of_gemm=round(r["gflop_per_s"] / gemm["gflop_per_s"], 4))
                print(f"  {r['layer']} batch {batch} {'channels_last' if cl else 'nchw'}: {r['gflop_per_s']} GFLOP/s "
                      f"({r['fraction_of_gemm']:.0%} of the matmul)", flush=True)
            result["ceiling"]["conv_layers"] += rows
    result["plain_loop"] = []
    for batch in ((2,) if q else (32, 128)):
        r = plain_loop(build, batch, SIZE, 10, steps=2 if q else max(10, 1600 // batch), rounds=args.rounds)
        r.update(gflop_per_s=round(r["img_per_s"] * flops / 1e9, 1), fraction_of_gemm=fraction(r["img_per_s"], flops, gemm["gflop_per_s"]))
        print(f"plain PyTorch loop, batch {batch}: {r['img_per_s']} img/s ({r['fraction_of_gemm']:.0%} of the matmul)", flush=True)
        result["plain_loop"].append(r)

    result["train"] = []
    with tempfile.TemporaryDirectory(prefix="cpu-step-") as tmp_s:
        tmp = Path(tmp_s)
        tree = tmp / "baseline"
        if ref is not None:
            result["baseline"] = {"ref": ref, "git_sha": add_worktree(ref, tree)}
        try:
            for setting in train_settings(args):
                ours_s, base_s = [], []
                for i in range(args.rounds):
                    ours_s.append(ours(setting, args, tmp, len(result["train"]) * 100 + i))
                    if ref is not None:
                        base_s.append(baseline(setting, args, tree, tmp, len(result["train"]) * 100 + i))
                row: dict[str, Any] = {**setting, "epochs": args.epochs, "steps_per_epoch": args.steps,
                                       "ours": summary(ours_s, flops, gemm["gflop_per_s"])}
                plain = next((p for p in result["plain_loop"] if p["batch"] == setting["batch_size"]), None)
                if plain:
                    row["ours_vs_plain_loop"] = round(row["ours"]["img_per_s"] / plain["img_per_s"], 3)
                line = f"alexnet train, {setting['name']}: ours {row['ours']['img_per_s']} img/s"
                if base_s:
                    row["baseline"] = summary(base_s, flops, gemm["gflop_per_s"])
                    row["speedup"] = round(statistics.median(a / b for a, b in zip(ours_s, base_s)), 3)
                    line += f", baseline {row['baseline']['img_per_s']} img/s, ours/baseline {row['speedup']}× (median of alternated pairs)"
                print(line, flush=True)
                result["train"].append(row)
        finally:
            if ref is not None and tree.exists():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
                shutil.rmtree(tree, ignore_errors=True)
    result["wall_s"] = round(time.time() - t_start, 1)
    result["load_average_1_5_15min"] = {"before": [round(x, 2) for x in load_before],
                                        "after": [round(x, 2) for x in os.getloadavg()]}
    path = write_results(results_path(args.out, "cpu-step-quick" if q else "cpu-step", env0), result, env0)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
