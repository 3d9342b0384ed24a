"""``alexnet experiment NAME --data D --out DIR [--scale quick|medium|full] [--seeds K]``: reproduce one
of the paper's claims; writes DIR/report.md (ours beside the paper's), DIR/results.json and PNG plots.
Runs live in DIR/runs/<variant>-s<seed>/; rerunning the same command skips finished runs and resumes
interrupted ones. ``--plan`` prints the runs, epochs, images and expected time instead (nothing is
trained or written)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from alexnet.commands.common import add_log_every_argument, at_least, print_stopped
from alexnet.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from alexnet.experiments import _REGISTRY

    listing = "; ".join(f"{e.name}: {e.summary}" for e in _REGISTRY.values())
    p.add_argument("name", metavar="NAME", help="the experiment: " + listing.replace("%", "%%"))
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (built in, 32×32 nets) or a prepared dataset folder (256×256 data: the paper's net)")
    p.add_argument("--out", default=None, help="experiment folder (report.md, results.json, plots, runs/); required "
                                               "unless --plan")
    p.add_argument("--quick", action="store_true", help="the same as --scale quick")
    p.add_argument("--scale", choices=["quick", "medium", "full"], default=None,
                   help="quick: a smoke test that the experiment runs (under 5 minutes on 2 CPU cores on the built-in "
                        "data; no claim is drawn from it); medium: sized for about 30 minutes on 2 CPU cores on "
                        "Fashion-MNIST (sweeps that bracket, 3 seeds); full (default): the recipe's epochs on all the data")
    p.add_argument("--plan", action="store_true",
                   help="print the runs, epochs, images and expected time (measured throughput here, and a stated "
                        "GPU throughput) without training")
    p.add_argument("--gpu-img-s", type=float, default=None, metavar="N",
                   help="--plan: the GPU training throughput to plan with (default: the stated one, where there is one)")
    p.add_argument("--threshold", type=float, default=None, metavar="ERR",
                   help="relu-vs-tanh: the training error to reach (default 0.25, the paper's on CIFAR-10; on "
                        "Fashion-MNIST the stated rule gives 0.125)")
    p.add_argument("--seeds", type=int, default=None, metavar="K",
                   help="seeds per arm (default 3; relu-vs-tanh 2 with --quick; ensemble: the number of nets, default 5, "
                        "3 with --quick); every arm gets the same learning-rate sweep and seeds")
    p.add_argument("--factors", action="store_true",
                   help="relu-vs-tanh: also vary one factor at a time (init scale, input scale, LRN); always on at full scale")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=at_least(-1), default=None, help="loader worker processes (default: automatic)")
    p.add_argument("--progress", action="store_true", help="show each run's per-epoch log")
    add_log_every_argument(p)


def run(args: argparse.Namespace) -> int:
    from alexnet.experiments import names, run_experiment

    if args.name not in names():
        raise UserError(f"unknown experiment {args.name!r}; accepted: {', '.join(names())}")
    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: must be at least 1")
    if args.quick and args.scale not in (None, "quick"):
        raise UserError(f"--quick and --scale {args.scale}: give one of them")
    scale = args.scale or ("quick" if args.quick else None)
    if args.plan:
        return _plan(args, scale)
    if args.out is None:
        raise UserError("--out DIR is required (unless --plan)")
    from alexnet.engine.train import Interrupted
    from alexnet.files import lock_folder

    with lock_folder(args.out):  # one experiment process per folder (each run inside is locked too)
        try:
            report = run_experiment(args.name, args.data, args.out, quick=args.quick, seeds=args.seeds, scale=scale,
                                    device=args.device, workers=args.workers, progress=args.progress,
                                    factors=args.factors, threshold=args.threshold)
        except Interrupted as e:
            # Like train: the run in progress wrote a checkpoint; the same command resumes it and
            # reuses the finished runs.
            print_stopped(e.exit_code, e.checkpoint, " ".join(shlex.quote(a) for a in ["alexnet", "experiment", *_argv()]), e.signal)
            return e.exit_code
    print(f"wrote {report} (results.json and plots beside it)")
    return 0


def _plan(args: argparse.Namespace, scale: str | None) -> int:
    """--plan: the experiment's runs (its own code, nothing trained), each distinct network's
    throughput measured here for a few seconds, the expected time here and on a GPU."""
    import torch

    from alexnet.data.processes import usable_cpus
    from alexnet.experiments.plan import GPU_IMG_S, busy_note, describe, make_plan
    from alexnet.experiments.runner import resolve_scale
    from alexnet.perf.throughput import measure

    plan = make_plan(args.name, args.data, scale=resolve_scale(False, scale), seeds=args.seeds, factors=args.factors,
                     threshold=args.threshold)
    from alexnet.experiments.runner import open_data

    classes = open_data(args.data).num_classes
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # before the probe adds its own
    cpu = {}
    for model, options, batch in plan.networks():
        key = json.dumps([model, options, batch], sort_keys=True)
        cpu[key] = measure(model, options, batch, classes)
    models_used = {m for m, _, _ in plan.networks()}
    gpu, source = args.gpu_img_s, "given by --gpu-img-s"
    if gpu is None and len(models_used) == 1 and next(iter(models_used)) in GPU_IMG_S:
        gpu, source = GPU_IMG_S[next(iter(models_used))]
    label = f"CPU, {torch.get_num_threads()} threads, throughput measured now for about 3 s per network"
    print(describe(plan, cpu, gpu, source, label, busy_note(load, usable_cpus())))
    return 0


def _argv() -> list[str]:
    """This command's arguments after ``experiment`` (as typed)."""
    argv = sys.argv[1:]
    return argv[argv.index("experiment") + 1:] if "experiment" in argv else argv
