"""``alexnet download NAME --out DIR``: fetch an official archive (resumable, checksum-verified)
and prepare it."""

from __future__ import annotations

import argparse

from alexnet.commands.common import add_log_every_argument, at_least
from alexnet.data.download import DATASETS, ENV_BASE_URL


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", choices=list(DATASETS),
                   help=f"one of: {', '.join(DATASETS)} (imagenette/imagewoof: fast.ai's 320 px builds; fashion-mnist: its four official IDX files)")
    p.add_argument("--out", required=True, metavar="DIR", help="the prepared dataset folder to create")
    p.add_argument("--base-url", default=None, metavar="URL",
                   help=f"download from URL/<archive name> instead of the official site (also ${ENV_BASE_URL})")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="where the archive is kept (default $ALEXNET_CACHE/downloads or ~/.cache/alexnet/downloads)")
    p.add_argument("--checksum", default=None, metavar="HEX",
                   help="expected md5 or sha256 of the archive, for a mirror serving another build")
    p.add_argument("--size", type=at_least(1), default=None, help="as in 'alexnet prepare' (default 256; CIFAR native 32)")
    p.add_argument("--workers", type=at_least(0), default=None, help="decoding processes (default: the CPUs this process may use)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    add_log_every_argument(p)


def run(args: argparse.Namespace) -> int:
    from alexnet.data.download import download

    out = download(args.name, args.out, base_url=args.base_url, progress=not args.quiet, cache=args.cache,
                   checksum=args.checksum, size=args.size, workers=args.workers)
    if args.quiet:
        print(out)
    return 0
