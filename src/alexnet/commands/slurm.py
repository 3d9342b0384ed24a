"""``alexnet slurm``: write a SLURM batch script that runs ``alexnet train`` under torchrun on
``--nodes`` × ``--gpus-per-node`` processes and requeues itself when the scheduler warns that the
job will end (SIGUSR1 → checkpoint → ``scontrol requeue`` → ``--resume``; see
:mod:`alexnet.engine.slurm`); ``--submit`` also hands it to ``sbatch``::

    alexnet slurm --nodes 4 --gpus-per-node 8 --time 24:00:00 --submit -- \\
        train --recipe fast --data /shared/imagenet --out /shared/runs/fast-32 --batch-size 4096

The training command is checked here, before it waits in the queue: its options, its config and
its run folder, as ``alexnet train`` would check them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from alexnet.commands.common import at_least
from alexnet.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=at_least(1), required=True, help="machines")
    p.add_argument("--gpus-per-node", type=at_least(1), required=True,
                   help="training processes per machine, one per GPU (torchrun's --nproc-per-node)")
    p.add_argument("--time", required=True, help="the job's time limit as sbatch takes it: MM, HH:MM:SS, D-HH:MM, ...")
    p.add_argument("--warning", type=at_least(10), default=120, metavar="SECONDS",
                   help="SIGUSR1 this long before the time limit: time to finish a step and write a checkpoint (default 120)")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--mem", default=None, help="memory per node, as sbatch takes it (e.g. 200G)")
    p.add_argument("--cpus-per-gpu", type=at_least(1), default=None, help="CPU cores per process (data loading)")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="any other sbatch option, written as given, e.g. --sbatch=--constraint=h100 (repeatable)")
    p.add_argument("--job-name", default=None, help="default: alexnet-<run folder name>")
    p.add_argument("--port", type=at_least(1), default=29500, help="the rendezvous port on the first node (default 29500)")
    p.add_argument("--python", default=None,
                   help="the Python the job runs, reachable from every node (default: this one)")
    p.add_argument("--script", default=None, help="where to write the batch script (default: RUN.sbatch beside --out's folder)")
    p.add_argument("--force", action="store_true", help="replace a --script file that this command did not write")
    p.add_argument("--submit", action="store_true", help="submit the script with sbatch (default: write it and print the command)")
    p.add_argument("train", nargs=argparse.REMAINDER, metavar="-- train ARGS",
                   help="the training command the job runs: -- train --out RUN ... (as alexnet train takes it)")


class _TrainParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # the training command's mistake, one line, before it is queued
        raise UserError(f"the training command after --: {message}")


def _train_args(given: list[str]) -> tuple[list[str], argparse.Namespace]:
    rest = given[1:] if given[:1] == ["--"] else given
    if rest[:1] != ["train"]:
        raise UserError("give the training command after --, e.g. alexnet slurm --nodes 2 --gpus-per-node 8 --time 4:00:00 "
                        "-- train --out RUN ...")
    from alexnet.commands import train as train_cmd

    parser = _TrainParser(prog="alexnet train", add_help=False)
    train_cmd.add_arguments(parser)
    return rest, parser.parse_args(rest[1:])


def _check_training(targs: argparse.Namespace) -> None:
    """What ``alexnet train`` would refuse at its start, refused now rather than after the queue."""
    from alexnet import models
    from alexnet.commands import train as train_cmd
    from alexnet.engine import run_folder

    out = Path(targs.out)
    cfg = train_cmd.config_from_args(targs)
    models.check_name(cfg.model)
    if not targs.resume:
        if run_folder.holds_run(out):
            raise UserError(f"--out {out}: already holds a run; add --resume to the training command to continue it "
                            f"or choose another --out")
        train_cmd.check_new_run_folder(out, cfg.data)


def run(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from alexnet.engine import slurm
    from alexnet.files import atomic_write_text, output_file

    limit = slurm.time_limit_s(args.time)
    if limit is None:
        raise UserError(f"--time {args.time!r}: not a SLURM time limit; accepted: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS")
    if args.warning >= limit:
        raise UserError(f"--warning {args.warning}: the warning would come before the job starts (--time {args.time} "
                        f"is {limit} s); give a shorter --warning or a longer --time")
    train, targs = _train_args(args.train)
    _check_training(targs)
    workdir = Path.cwd()
    run_dir = Path(os.path.abspath(targs.out))
    script = Path(args.script) if args.script else run_dir.parent / f"{run_dir.name}.sbatch"
    for what, path in (("the run folder", run_dir), ("the current folder", workdir)):
        if any(c.isspace() for c in str(path)) or "%" in str(path):
            raise UserError(f"{what} {path}: has a space or '%', which #SBATCH lines do not take; choose another place")
    job = slurm.BatchJob(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, time=args.time, train_args=train, run=run_dir, workdir=workdir,
        python=args.python or sys.executable, job_name=args.job_name or f"alexnet-{run_dir.name}", warning_s=args.warning,
        port=args.port, cpus_per_gpu=args.cpus_per_gpu, partition=args.partition, account=args.account, qos=args.qos,
        mem=args.mem, extra_sbatch=list(args.sbatch))
    with output_file(script, force=args.force, ours=slurm.written_by_us, flag="--script") as path:
        atomic_write_text(path, slurm.sbatch_script(job))
    print(f"wrote {script}: {args.nodes} node(s) × {args.gpus_per_node} process(es), time limit {args.time}; "
          f"SIGUSR1 {args.warning} s before it → checkpoint → scontrol requeue → --resume")
    if not args.submit:
        print(f"submit with: sbatch {shlex.quote(str(script))}")
        return 0
    if shutil.which("sbatch") is None:
        raise UserError(f"--submit: sbatch is not on PATH (not a SLURM login node?); the script is written: {script}")
    r = subprocess.run(["sbatch", str(script)], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"sbatch {script} failed (exit {r.returncode}): {last}")
    print(r.stdout.strip())
    return 0
