"""``alexnet filters RUN --out PNG``: the first-layer kernels, per tower as in Figure 3."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_OR_WEIGHTS")
    p.add_argument("--out", required=True, metavar="PNG")


def run(args: argparse.Namespace) -> int:
    from alexnet.engine.inference import load
    from alexnet.report.run import draw_filters

    print(draw_filters(load(args.run).model, Path(args.out)))
    return 0
