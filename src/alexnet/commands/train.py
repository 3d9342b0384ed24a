"""``alexnet train``: a recipe (configs/*.yaml), overridden by the command line.

Long runs: ``--save-every N`` checkpoints every N steps (and every epoch end); ``--resume``
continues RUN from its latest checkpoint, bit-exactly; SIGTERM/SIGINT checkpoint and exit
143/130 with the command that resumes. Several GPUs or machines: launch the same command with
``torchrun`` (see :mod:`alexnet.engine.distributed`); ``--batch-size`` stays the global batch.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from alexnet import config as config_mod
from alexnet.commands.common import add_engine_arguments, add_log_every_argument, parse_assignments, print_stopped
from alexnet.errors import UserError, shown


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="'synthetic' (built in) or a prepared dataset folder")
    p.add_argument("--model", default=None, help="a model name: alexnet (default), alexnet-owt, alexnet-cifar, lenet5; an unknown name is refused "
                        "with the list")
    p.add_argument("--out", required=True, help="run folder (config, metrics, checkpoints, weights)")
    p.add_argument("--recipe", default=None,
                   help=f"one of: {', '.join(config_mod.recipe_names())}, or a .yaml file (default: the model's)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (the paper's epsilon)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (and at every epoch end)")
    p.add_argument("--keep", type=int, default=None, metavar="K", help="keep the newest K checkpoints (default 2; 0 = all)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (with its saved config.yaml)")
    p.add_argument("--ten-crop", action="store_true", default=None, help="10-crop in the per-epoch evaluation")
    p.add_argument("--tensorboard", action="store_true", default=None, help="also write TensorBoard event files to RUN/tb")
    p.add_argument("--model-parallel", type=int, default=None, choices=[1, 2],
                   help="2: the paper's two-GPU split of the towers (§3.2), model alexnet only")
    p.add_argument("--parallel", default=None, choices=["ddp", "owt"],
                   help="under torchrun: ddp (default), or owt: data-parallel conv layers, FC layers split over the "
                        "processes (Krizhevsky 2014, 'one weird trick')")
    p.add_argument("--model-opt", action="append", metavar="K=V", help="model option, e.g. lrn=none, activation=tanh")
    p.add_argument("--set", action="append", metavar="K=V", help="any config field, e.g. pca_std=0 or schedule=cosine")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_log_every_argument(p)
    add_engine_arguments(p)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = parse_assignments(args.set, "--set")
    flags = {key: getattr(args, key, None) for key in (
        "data", "model", "epochs", "batch_size", "lr", "seed", "save_every", "ten_crop", "tensorboard", "model_parallel",
        "parallel", "device", "workers", "amp", "channels_last", "compile")}
    flags["keep_checkpoints"] = args.keep
    flags["progress"] = False if args.no_progress else None
    for key, v in flags.items():
        if v is None:
            continue
        if key in overrides:  # a setting given two ways: never one of them silently dropped
            flag = {"keep_checkpoints": "--keep", "progress": "--no-progress"}.get(key, "--" + key.replace("_", "-"))
            raise UserError(f"{key} is given twice: {flag} and --set {key}={shown(overrides[key], 40)}; give it once")
        overrides[key] = v
    if args.model_opt:
        given = overrides.get("model_options", {})
        if not isinstance(given, dict):
            raise UserError(f"--set model_options={shown(given)}: model_options is a mapping of option: value; "
                            f"give options with --model-opt NAME=VALUE")
        opts = parse_assignments(args.model_opt, "--model-opt")
        twice = sorted(set(opts) & set(given))
        if twice:
            raise UserError(f"model option {twice[0]} is given twice: --model-opt and --set model_options; give it once")
        overrides["model_options"] = {**given, **opts}
    return overrides


def config_from_args(args: argparse.Namespace) -> config_mod.TrainConfig:
    """The run's config (:func:`alexnet.config.resolve`): the recipe, or with ``--resume`` the run's
    own saved config, under the command line's options."""
    from alexnet.engine.device import is_cuda

    overrides = _overrides(args)
    if args.resume:
        from alexnet.engine.resume import saved_config

        saved = saved_config(Path(args.out), recipe_given=args.recipe is not None,
                             warn=lambda s: print(s, file=sys.stderr))
        if saved is not None:  # the run's own saved config, under any options given now
            return config_mod.resolve(base=saved[0], overrides=overrides, source=saved[1], cuda=is_cuda)
    return config_mod.resolve(args.recipe, overrides, cuda=is_cuda)


def resume_command(out: str) -> str:
    """The command that continues this run (its config is saved in RUN, so this is all it needs)."""
    from alexnet.engine import distributed

    tail = f"-m alexnet train --out {shlex.quote(out)} --resume"
    info = distributed.from_env()
    if distributed.under_torchrun():
        if info.local_world_size == info.world_size:
            return f"torchrun --standalone --nproc_per_node={info.world_size} {tail}"
        nodes = info.world_size // max(1, info.local_world_size)
        return (f"torchrun --nnodes={nodes} --nproc_per_node={info.local_world_size} <the same rendezvous options> {tail} "
                f"(on every node)")
    if Path(sys.argv[0]).name == "alexnet":
        return f"alexnet train --out {shlex.quote(out)} --resume"
    return f"{shlex.quote(sys.executable)} {tail}"


def check_new_run_folder(out: Path, data: str) -> None:
    """Refuse, as ``prepare`` does, a --out that is not a place for a new run: a prepared dataset,
    a file, a folder holding other things, the dataset's own folder or one inside or around it.
    A run folder (config.yaml) is judged by the training itself (a finished run needs --resume)."""
    from alexnet.data.format import is_prepared
    from alexnet.engine import run_folder

    if is_prepared(out):
        raise UserError(f"--out {out}: a prepared dataset is there; choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and not run_folder.has_config(out) and any(p.name != ".lock" for p in out.iterdir()):
        raise UserError(f"--out {out}: exists and is neither a run folder nor empty; choose another --out")
    if data and Path(data).exists():
        a, b = out.resolve(), Path(data).resolve()
        if a == b or b in a.parents or a in b.parents:
            raise UserError(f"--out {out}: is the dataset {data} or inside or around it; choose another --out")


def run(args: argparse.Namespace) -> int:
    from alexnet import models
    from alexnet.engine.checkpoint import CheckpointWriteError
    from alexnet.engine.train import Interrupted, run as train_run
    from alexnet.files import nonempty_path

    nonempty_path(args.out, "--out")
    cfg = config_from_args(args)
    models.check_name(cfg.model)
    main = int(os.environ.get("RANK", 0)) == 0
    if not args.resume:
        check_new_run_folder(Path(args.out), cfg.data)
    try:
        summary = train_run(cfg, args.out, resume=args.resume)
    except (OSError, CheckpointWriteError) as e:
        # A full disk (or a place that stopped taking writes): the checkpoints written before are
        # intact; say which one the resume starts from.
        from alexnet.engine.checkpoint import latest_checkpoint
        from alexnet.files import DISK_FULL, os_error_line

        if isinstance(e, OSError):
            last = latest_checkpoint(Path(args.out))
            what = f"the last checkpoint {last} is intact" if last else "no checkpoint was written yet"
            line = f"{os_error_line(e, args.out)}; {what}"
        else:
            line = str(e)
        full = not isinstance(e, OSError) or e.errno in DISK_FULL
        raise UserError(f"{line}; {'free space, then ' if full else ''}resume with: {resume_command(args.out)}") from None
    except Interrupted as e:
        if main:
            print_stopped(e.exit_code, e.checkpoint, resume_command(args.out), e.signal)
        return e.exit_code
    final = summary["final"]
    if main:
        print(f"done: {summary['epochs']} epochs, {summary['steps']} steps in {summary['time_s']:.0f} s; "
              f"val top-1 {final.get('val_top1_err', float('nan')):.4f}, top-5 {final.get('val_top5_err', float('nan')):.4f}; "
              f"weights {summary['weights']}")
    return 0
