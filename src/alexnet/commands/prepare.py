"""``alexnet prepare SRC --out DIR``: prepare a dataset once (§2), then train on DIR."""

from __future__ import annotations

import argparse

from alexnet.commands.common import add_log_every_argument, at_least
from alexnet.data.sources.detect import FORMATS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC",
                   help="folder of the ILSVRC-2012 archives (train tar, val tar, devkit), an extracted ImageNet tree, "
                        "an image-folder tree (folder or .tar/.tgz) with train/ and val/, CIFAR pickles "
                        "(cifar-10-python.tar.gz or cifar-10-batches-py/), a folder of MNIST-family IDX files, "
                        "or 'synthetic'")
    p.add_argument("--out", required=True, metavar="DIR", help="the prepared dataset folder to create")
    p.add_argument("--size", type=at_least(1), default=None,
                   help="shorter side rescaled to SIZE, central SIZE×SIZE crop (default 256; CIFAR/MNIST and folders "
                        "of small images keep their native size unless given)")
    p.add_argument("--workers", type=at_least(0), default=None, help="decoding processes (default: the CPUs this process may use)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default=None, help="source type (default: detected)")
    p.add_argument("--quality", type=at_least(1), default=None, help="JPEG quality of the stored images (default 90; JPEG only)")
    p.add_argument("--encoding", choices=["jpeg", "raw"], default=None,
                   help="stored encoding (default: raw up to 64×64, JPEG above)")
    p.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="for a tree without val/: hold out this fraction of every class as val; for IDX files "
                        "(MNIST, Fashion-MNIST): val is this fraction of the training set instead of the test set, "
                        "which is left out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_log_every_argument(p)


def run(args: argparse.Namespace) -> int:
    from alexnet.data.prepare import prepare

    out = prepare(args.src, args.out, size=args.size, workers=args.workers, fmt=args.fmt, quality=args.quality,
                  encoding=args.encoding, val_fraction=args.val_fraction, progress=not args.quiet)
    if args.quiet:
        print(out)
    return 0
