"""``alexnet evaluate RUN... --data D [--ten-crop] [--json]``: several runs form an ensemble
(the paper's 5 and 7 CNNs: the softmax outputs are averaged)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from alexnet.commands.common import add_engine_arguments, add_log_every_argument, at_least
from alexnet.errors import UserError

if TYPE_CHECKING:  # imported in the functions: the parser (alexnet --help) loads no torch
    import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or weights files; several = an ensemble")
    p.add_argument("--data", default=None, help="dataset (default: the one the first run was trained on)")
    p.add_argument("--split", default="val")
    p.add_argument("--ten-crop", action="store_true", help="§4.1: average the softmax over 10 patches")
    p.add_argument("--batch-size", type=at_least(1), default=128)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--confusion", default=None, metavar="PNG",
                   help="also draw the confusion matrix here (an existing file only if an earlier 'alexnet evaluate' "
                        "drew it, or with --force)")
    p.add_argument("--force", action="store_true", help="replace whatever file is at --confusion")
    p.add_argument("--quiet", action="store_true", help="no progress bar or periodic progress lines")
    add_engine_arguments(p)
    add_log_every_argument(p)


SOFTWARE = "alexnet evaluate"  # the confusion PNG's Software field: how a rerun recognises its own earlier output


def run(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from alexnet.files import BusyError, lock_folder, output_file
    from alexnet.report.figures import png_written_by

    if args.workers is not None and args.workers < -1:
        raise UserError(f"--workers {args.workers}: must be 0 or more (or -1 for automatic)")
    if args.force and not args.confusion:
        raise UserError("--force applies to --confusion only: evaluate writes no other file of yours")
    lock = None
    if len(args.runs) == 1 and Path(args.runs[0]).is_dir():
        try:
            lock = lock_folder(args.runs[0])  # eval.json is written into the run: not beside a live writer
        except BusyError:
            raise
        except UserError as e:
            print(f"warning: {e}; the result is printed but not recorded in eval.json", file=sys.stderr)
    try:
        # Places to write are checked before the evaluation, not after it.
        with (output_file(args.confusion, force=args.force, ours=lambda p: png_written_by(p, SOFTWARE),
                          flag="--confusion") if args.confusion else nullcontext()):
            return _run(args, lock is not None)
    finally:
        if lock is not None:
            lock.release()


def _run(args: argparse.Namespace, record: bool) -> int:
    import torch

    from alexnet.data.format import PreparedDataset
    from alexnet.data.resolve import resolve_data
    from alexnet.engine.device import pick_device
    from alexnet.engine.evaluate import Precision, evaluate, per_class_summary
    from alexnet.engine.inference import augment_for, check_classes, imagenet_order_only, load

    device = pick_device(args.device or "auto")
    members = [load(r, device) for r in args.runs]
    first = members[0].meta
    data = args.data or first.get("data")
    if not data:
        raise UserError(f"{args.runs[0]}: no dataset recorded; pass --data")
    ds = PreparedDataset(resolve_data(data, first["input_size"]), args.split)
    for m in members:
        if m.meta["num_classes"] != ds.num_classes:
            raise UserError(f"{m.source}: predicts {m.meta['num_classes']} classes but {data} has {ds.num_classes}")
        if imagenet_order_only(m.meta):
            _check_imagenet_order(m.source, ds.classes, str(data))
        else:  # all before the first evaluation: an ensemble's members agree with each other and the data
            check_classes(m, ds)
    prec = Precision(device, args.amp or "none", bool(args.channels_last))
    results = []
    probs = None
    for m in members:
        r = evaluate(m.model, ds, augment_for(m, ds), prec, batch_size=args.batch_size, ten_crop=args.ten_crop,
                     workers=-1 if args.workers is None else args.workers, return_probs=True,
                     progress=not args.quiet)
        probs = r.probs if probs is None else probs + r.probs  # type: ignore[operator]
        results.append({"run": str(m.source), **r.metrics()})
    labels = torch.from_numpy(ds.labels).long()
    probs = probs / len(members)  # type: ignore[operator]
    out = per_class_summary(probs, labels, ds.class_names)
    out.update({"data": str(data), "split": args.split, "ten_crop": args.ten_crop, "n": len(labels),
                "members": results if len(members) > 1 else None})
    confusion = out.pop("_confusion")
    if record:  # first: a figure that fails to save must not lose the numbers
        from alexnet.engine.run_folder import record_eval

        record_eval(Path(args.runs[0]), "ten_crop" if args.ten_crop else "center", out)
    if args.confusion:
        from alexnet.report.figures import plot_confusion

        plot_confusion(confusion, ds.class_names, Path(args.confusion), software=SOFTWARE)
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if v is not None}))
    else:
        label = f"ensemble of {len(members)}" if len(members) > 1 else str(args.runs[0])
        print(f"{label} on {data}/{args.split} ({'10-crop' if args.ten_crop else 'centre crop'}, {len(labels)} images): "
              f"top-1 error {out['top1_err']:.4f}, top-5 error {out['top5_err']:.4f}")
        for r in results if len(members) > 1 else []:
            print(f"  {r['run']}: top-1 {r['top1_err']:.4f}, top-5 {r['top5_err']:.4f}")
    return 0


def _check_imagenet_order(weights: object, classes: list[str], data: str) -> None:
    """torchvision's (and Caffe's) output unit i is the i-th ILSVRC-2012 WNID in sorted order; a dataset whose
    labels are numbered otherwise would be scored against the wrong classes."""
    from alexnet.data.sources.base import WNID_RE

    not_wnid = [c for c in classes if not WNID_RE.match(c)]
    if not_wnid:
        raise UserError(f"{data}: classes are not ImageNet WNIDs (e.g. {not_wnid[0]!r}); "
                        f"{weights} needs a dataset whose classes are the ILSVRC-2012 WNIDs in sorted order")
    if classes != sorted(classes):
        raise UserError(f"{data}: classes are not in sorted-WNID order, the order of {weights}'s outputs")
