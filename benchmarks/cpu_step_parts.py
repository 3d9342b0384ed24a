"""Where `alexnet train`'s CPU step spends its time: the whole step, its augmentation, the step with
and without response normalisation (§3.3), and the three convolutions alone, for `alexnet-cifar`.

    PYTHONPATH=src python benchmarks/cpu_step_parts.py            # ~2 min on 2 cores
    PYTHONPATH=src python benchmarks/cpu_step_parts.py --quick    # smoke run (seconds)

The step is ``alexnet.engine.train.setup``'s own (:class:`~alexnet.engine.fast_step.FastStep`: the
recipe's augmentation, channels_last, the paper's update) on batches taken from its own loader once
and replayed, for (a) the demo recipe (batch 32, the built-in data) and (b) the cifar recipe at batch
128 on the built-in data. ``lrn: none`` is the same net with the model option ``lrn="none"``: the
difference is what LRN costs in the step (the rest of the net is the same layers on the same shapes).
The two variants alternate round by round in this process. ``augment`` is ``FastStep.prepare`` alone
(§4.1's crop, flip and colour noise); ``convs`` is ``alexnet.perf.ceiling.conv_layer_rates`` (each conv
layer forward + backward at its shapes, channels_last, best of its repeats, on the same clock).

With ``--threads 1`` (the default) steps are timed in the thread's CPU time (``time.thread_time``),
which a second job on the machine moves much less than the wall clock (it still shares the caches);
otherwise in wall time. This is a breakdown, not a throughput: ``benchmarks/cpu_step.py`` measures
`alexnet train` end to end against a baseline commit. Writes
benchmarks/results/cpu-step-parts-<date>.json (machine, versions, git SHA, load average).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from alexnet import config as config_mod
from alexnet import models
from alexnet.engine import train as engine_train
from alexnet.environment import environment
from alexnet.perf.ceiling import conv_layer_rates
from alexnet.perf.results import results_path, write_results

ROOT = Path(__file__).resolve().parent
MODEL = "alexnet-cifar"
SETTINGS = [("demo", 32), ("cifar", 128)]


def make_step(recipe: str, batch: int, lrn: str, steps: int, tmp: Path) -> tuple[engine_train.Context, list[Any]]:
    """``alexnet train``'s set-up for ``recipe`` at ``batch`` on the built-in data, and ``steps``
    batches from its loader."""
    cfg = config_mod.resolve(recipe, {"data": "synthetic", "model": MODEL, "batch_size": batch, "epochs": 1,
                                      "max_steps_per_epoch": steps, "schedule": "constant", "device": "cpu",
                                      "progress": False, "seed": 0, "model_options": {"lrn": lrn}},
                             cuda=lambda d: False)
    ctx = engine_train.setup(cfg, tmp / f"{recipe}-{batch}-{lrn}", log=lambda s: None)
    batches = list(ctx.train_loader.iterate(start_batch=0))
    ctx.train_loader.close()
    ctx.model.train()
    return ctx, batches


def timed(clock: Callable[[], float], ctx: engine_train.Context, batches: list[Any]) -> tuple[list[float], list[float]]:
    """Seconds per step and per augmentation (``prepare``) of each batch."""
    step, prep = [], []
    for b in batches:
        t0 = clock()
        ctx.step_fn(b.images, b.labels, b.indices, 0)
        t1 = clock()
        ctx.step_fn.prepare(b.images, b.indices, 0)
        prep.append(clock() - t1)
        step.append(t1 - t0)
    return step, prep


def ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 3 steps, batch 128 skipped")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: thread CPU time; more: wall time)")
    ap.add_argument("--rounds", type=int, default=None, help="alternated rounds (default 6; the first is warm-up)")
    ap.add_argument("--steps", type=int, default=None, help="batches per round (default 12)")
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 6)
    steps = args.steps or (3 if args.quick else 12)
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    env = environment("cpu")
    result: dict[str, Any] = {"benchmark": "cpu-step-parts", "command": " ".join(["benchmarks/cpu_step_parts.py", *sys.argv[1:]]),
                              "environment": env, "threads": args.threads, "quick": args.quick, "model": MODEL,
                              "clock": "thread_time" if args.threads == 1 else "wall", "load_before": os.getloadavg(),
                              "settings": []}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe, batch in SETTINGS[:1] if args.quick else SETTINGS:
            variants = {lrn: make_step(recipe, batch, lrn, steps, Path(tmp)) for lrn in ("paper", "none")}
            samples: dict[str, dict[str, list[float]]] = {lrn: {"step": [], "augment": []} for lrn in variants}
            for r in range(rounds):
                for lrn, (ctx, batches) in variants.items():
                    step, prep = timed(clock, ctx, batches)
                    if r:  # the first round warms the allocator and oneDNN's primitive caches
                        samples[lrn]["step"] += step
                        samples[lrn]["augment"] += prep
            convs = conv_layer_rates(lambda: models.create(MODEL, 10), batch, 32, channels_last=True,
                                     repeats=2 if args.quick else 5, clock=clock)
            paper, none = ms(samples["paper"]["step"]), ms(samples["none"]["step"])
            conv_ms = round(sum(c["ms"] for c in convs), 3)
            row = {"recipe": recipe, "batch": batch, "step_ms": paper, "step_ms_lrn_none": none,
                   "lrn_ms": round(paper - none, 3), "lrn_fraction": round(1 - none / paper, 3),
                   "augment_ms": ms(samples["paper"]["augment"]), "convs_ms": conv_ms,
                   "convs_fraction": round(conv_ms / paper, 3), "convs": convs, "samples": len(samples["paper"]["step"])}
            result["settings"].append(row)
            print(f"{recipe} batch {batch}: step {paper:.2f} ms, without LRN {none:.2f} ms (LRN {row['lrn_fraction']:.0%}), "
                  f"augment {row['augment_ms']:.2f} ms, convs alone {conv_ms:.2f} ms ({row['convs_fraction']:.0%})", flush=True)
    result["load_after"] = os.getloadavg()
    path = results_path(args.out, "cpu-step-parts" + ("-quick" if args.quick else ""), env)
    write_results(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
