"""``alexnet report RUN``: redraw a run's figures and rewrite its report.md."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--data", default=None, help="dataset for predictions (default: the run's own)")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from alexnet.errors import UserError
    from alexnet.report.run import regenerate

    from alexnet.files import nonempty_path

    run_dir = nonempty_path(args.run, "RUN")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    from alexnet.engine import run_folder

    if not run_folder.has_config(run_dir):  # an image folder, a dataset, any other folder: never written into
        raise UserError(f"{run_dir}: not a run folder (no config.yaml); report writes only into a folder 'alexnet train' "
                        f"made")
    from alexnet.files import lock_folder

    with lock_folder(run_dir):  # not while a training process (or another report) writes the folder
        print(regenerate(run_dir, data=args.data, device=args.device))
    return 0
