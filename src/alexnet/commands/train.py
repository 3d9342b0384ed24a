"""``alexnet train``: a recipe (configs/*.yaml), overridden by the command line."""

from __future__ import annotations

import argparse
import sys

from alexnet import config as config_mod
from alexnet import models
from alexnet.commands.common import add_engine_arguments, parse_assignments
from alexnet.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="'synthetic' (built in) or a prepared dataset folder")
    p.add_argument("--model", default=None, help=f"one of: {', '.join(models.names())}")
    p.add_argument("--out", required=True, help="run folder (config, metrics, checkpoints, weights)")
    p.add_argument("--recipe", default=None,
                   help=f"one of: {', '.join(config_mod.recipe_names())}, or a .yaml file (default: the model's)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (the paper's epsilon)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (and at every epoch end)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--ten-crop", action="store_true", default=None, help="10-crop in the per-epoch evaluation")
    p.add_argument("--tensorboard", action="store_true", default=None, help="also write TensorBoard event files")
    p.add_argument("--model-parallel", type=int, default=None, choices=[1, 2], help="2: the paper's two-GPU split (§3.2)")
    p.add_argument("--model-opt", action="append", metavar="K=V", help="model option, e.g. lrn=none, activation=tanh")
    p.add_argument("--set", action="append", metavar="K=V", help="any config field, e.g. pca_std=0 or schedule=cosine")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_engine_arguments(p)


def config_from_args(args: argparse.Namespace) -> config_mod.TrainConfig:
    overrides = parse_assignments(args.set, "--set")
    for key in ("data", "model", "epochs", "batch_size", "lr", "seed", "save_every", "ten_crop", "tensorboard",
                "model_parallel", "device", "workers", "amp", "channels_last", "compile"):
        v = getattr(args, key, None)
        if v is not None:
            overrides[key] = v
    if args.model_opt:
        overrides["model_options"] = {**overrides.get("model_options", {}), **parse_assignments(args.model_opt, "--model-opt")}
    if args.no_progress:
        overrides["progress"] = False
    if args.recipe is None and args.resume:
        return _resumed_config(args, overrides)
    cfg = config_mod.resolve(args.recipe, overrides)
    models.info(cfg.model) if cfg.model in models.names() else None
    return cfg


def _resumed_config(args: argparse.Namespace, overrides: dict) -> config_mod.TrainConfig:
    """--resume without --recipe continues with the run's own saved config."""
    from pathlib import Path

    import yaml

    p = Path(args.out) / "config.yaml"
    if not p.is_file():
        return config_mod.resolve(None, overrides)
    d = yaml.safe_load(p.read_text())
    d.update(overrides)
    return config_mod.TrainConfig.from_dict(d, source=str(p))


def run(args: argparse.Namespace) -> int:
    from alexnet.engine.train import Interrupted, run as train_run

    cfg = config_from_args(args)
    if cfg.model not in models.names():
        raise UserError(f"unknown model {cfg.model!r}; accepted: {', '.join(models.names())}")
    try:
        summary = train_run(cfg, args.out, resume=args.resume)
    except Interrupted as e:
        where = f"checkpoint {e.checkpoint}" if e.checkpoint else "no checkpoint"
        print(f"stopped: {where}; resume with: alexnet train --out {args.out} --resume", file=sys.stderr)
        return e.exit_code
    final = summary["final"]
    print(f"done: {summary['epochs']} epochs, {summary['steps']} steps in {summary['time_s']:.0f} s; "
          f"val top-1 {final.get('val_top1_err', float('nan')):.4f}, top-5 {final.get('val_top5_err', float('nan')):.4f}; "
          f"weights {summary['weights']}")
    return 0
