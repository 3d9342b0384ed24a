"""``alexnet experiment NAME --data D --out DIR [--quick] [--seeds K]``: reproduce one of the paper's
claims; writes DIR/report.md (ours beside the paper's), DIR/results.json and PNG plots. Runs live in
DIR/runs/<variant>-s<seed>/; rerunning the same command skips finished runs and resumes interrupted
ones."""

from __future__ import annotations

import argparse
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
    p.add_argument("--out", required=True, help="experiment folder (report.md, results.json, plots, runs/)")
    p.add_argument("--quick", action="store_true", help="a small scale: under 5 minutes on 2 CPU cores on the built-in data")
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
    from alexnet.engine.train import Interrupted
    from alexnet.files import lock_folder

    with lock_folder(args.out):  # one experiment process per folder (each run inside is locked too)
        try:
            report = run_experiment(args.name, args.data, args.out, quick=args.quick, seeds=args.seeds,
                                    device=args.device, workers=args.workers, progress=args.progress,
                                    factors=args.factors)
        except Interrupted as e:
            # Like train: the run in progress wrote a checkpoint; the same command resumes it and
            # reuses the finished runs.
            print_stopped(e.exit_code, e.checkpoint, " ".join(shlex.quote(a) for a in ["alexnet", "experiment", *_argv()]))
            return e.exit_code
    print(f"wrote {report} (results.json and plots beside it)")
    return 0


def _argv() -> list[str]:
    """This command's arguments after ``experiment`` (as typed)."""
    argv = sys.argv[1:]
    return argv[argv.index("experiment") + 1:] if "experiment" in argv else argv
