"""``alexnet filters RUN --out PNG``: the first-layer kernels, per tower as in Figure 3."""

from __future__ import annotations

import argparse
from pathlib import Path

SOFTWARE = "alexnet filters"  # the PNG's Software field: how a rerun recognises its own earlier output


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_OR_WEIGHTS")
    p.add_argument("--out", required=True, metavar="PNG", help="the PNG to write (an existing file only if an earlier "
                                                                 "'alexnet filters' wrote it, or with --force)")
    p.add_argument("--force", action="store_true", help="replace whatever file is at --out")


def run(args: argparse.Namespace) -> int:
    from alexnet.engine.inference import load
    from alexnet.files import output_file
    from alexnet.report.figures import png_written_by
    from alexnet.report.run import draw_filters

    with output_file(args.out, force=args.force, ours=lambda p: png_written_by(p, SOFTWARE)) as out:
        trained = load(args.run)
        print(draw_filters(trained.model, Path(out), trained.meta.get("channel_order", "rgb"), software=SOFTWARE))
    return 0
