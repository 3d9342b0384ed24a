"""``alexnet demo``: the main job on the built-in data, end to end, in a few CPU minutes."""

from __future__ import annotations

import argparse
import shutil
import signal
import time
from pathlib import Path

from alexnet import signals
from alexnet.commands.common import add_log_every_argument
from alexnet.errors import UserError

DEMO_MARK = ".alexnet-demo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo; a previous demo there is replaced)")
    p.add_argument("--epochs", type=int, default=None, help="override the demo recipe's epochs")
    p.add_argument("--seed", type=int, default=None, help="override the demo recipe's seed (initial weights, shuffle, augmentation)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    add_log_every_argument(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from alexnet import config as config_mod
    from alexnet.data.format import PreparedDataset
    from alexnet.data.resolve import resolve_data
    from alexnet.engine.device import is_cuda, pick_device
    from alexnet.engine.evaluate import Precision, evaluate
    from alexnet.engine.inference import augment_for, load
    from alexnet.engine.train import Interrupted, run as train_run
    from alexnet.report.markdown import write_run_report
    from alexnet.engine import run_folder
    from alexnet.engine.run_folder import record_eval
    from alexnet.report.run import make_run_figures

    t0 = time.time()
    out = Path(args.out)
    if out.exists():
        if not (out / DEMO_MARK).exists() and any(out.iterdir()):
            raise UserError(f"{out}: exists and is not a demo run folder; choose another --out")
        shutil.rmtree(out)  # a previous demo: start fresh
    out.mkdir(parents=True)
    (out / DEMO_MARK).touch()

    overrides: dict[str, object] = {"device": args.device, "progress": not args.no_progress}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.seed is not None:
        overrides["seed"] = args.seed
    cfg = config_mod.resolve("demo", overrides, cuda=is_cuda)
    print("[1/4] built-in dataset: 10 shape classes, stored 36×36 for 32×32 crops (cached after the first run)")
    root = resolve_data(cfg.data, 32)
    print(f"      {root}")
    print(f"[2/4] training {cfg.model} with the paper's update rule, crops, flips and PCA colour noise "
          f"({cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr:g} divided by 10 after epochs "
          f"{', '.join(map(str, cfg.step_epochs))}, seed {cfg.seed})")
    try:
        train_run(cfg, out)
    except Interrupted as e:  # one line, as for any command (a later demo replaces the folder)
        signals.stop_now(signal.SIGINT if e.exit_code == 130 else signal.SIGTERM)

    print("[3/4] evaluating on the validation split: centre crop and the 10-crop average (§4.1)")
    device = pick_device(args.device)
    trained = load(out, device)
    ds = PreparedDataset(root, "val")
    aug = augment_for(trained, ds)
    prec = Precision(device)
    results = {}
    for key, ten in (("center", False), ("ten_crop", True)):
        r = evaluate(trained.model, ds, aug, prec, ten_crop=ten, progress=not args.no_progress)
        record_eval(out, key, r.metrics())
        results[key] = r
    chance = 1 - 1 / ds.num_classes
    for key, r in results.items():
        print(f"      {key:8s}: top-1 error {r.top1_err:.3f}, top-5 error {r.top5_err:.3f}  (chance: top-1 {chance:.3f})")

    print("[4/4] figures and report")
    with torch.no_grad():
        make_run_figures(out, device=str(device))
    report = write_run_report(out)
    print(f"done in {time.time() - t0:.0f} s. Files in {out}/:")
    for name in ("report.md", run_folder.METRICS, "curves.png", "filters.png", "predictions.png", "confusion.png",
                 run_folder.WEIGHTS, run_folder.CONFIG):
        if (out / name).exists():
            print(f"  {out / name}")
    print(f"open {report} to see the run beside the paper's figures")
    return 0
