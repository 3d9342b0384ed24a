"""``alexnet shard DATASET --out DIR_OR_S3_URL``: export a prepared dataset to litdata's shards,
to train from it streamed (``alexnet train --data s3://bucket/prefix``)."""

from __future__ import annotations

import argparse

from alexnet.commands.common import at_least


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", help="a prepared dataset folder ('alexnet prepare' made it)")
    p.add_argument("--out", required=True, metavar="DIR_OR_URL",
                   help="where the export goes: an empty (or new) folder, or s3://BUCKET/PREFIX (endpoint and "
                        "credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")
    p.add_argument("--chunk-mb", type=at_least(1), default=64, metavar="MB",
                   help="target size of one shard (litdata chunk), in MiB (default 64)")
    p.add_argument("--quiet", action="store_true", help="print only where the export is")


def run(args: argparse.Namespace) -> int:
    from alexnet.data.shards import export_shards

    out = export_shards(args.dataset, args.out, chunk_bytes=args.chunk_mb * 2**20,
                        log=(lambda s: None) if args.quiet else print)
    print(out if args.quiet else f"exported {args.dataset} to {out}; train with: alexnet train --data {out}")
    return 0
