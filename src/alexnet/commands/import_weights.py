"""``alexnet import caffe bvlc_alexnet.caffemodel [--deploy deploy.prototxt] [--mean M] [--synsets S] --out RUN``.

Published weights of the 2012 architecture as a run folder like any other: ``RUN/model.safetensors``
(the network as ``alexnet`` with Caffe's options, the mean, and metadata saying the input is BGR
minus that mean) and ``RUN/import.json`` (what was read: the file, its sha256, the layers mapped),
so ``predict``, ``evaluate``, ``export``, ``push`` and the hubs take ``RUN``. See
:mod:`alexnet.engine.caffe_weights` for how Caffe's nets differ from the paper's.

``--out`` is a new or empty folder, or one an earlier ``alexnet import caffe`` wrote and nothing
else has written into (an ``eval.json`` of the old weights would describe the wrong ones).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from alexnet.commands.common import optional_engine_module
from alexnet.errors import UserError

WRITTEN_BY = "alexnet import caffe"
SUMMARY = "import.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="format", metavar="FORMAT", parser_class=type(p))
    sub.required = True
    c = sub.add_parser("caffe", help="Caffe's bvlc_alexnet (or bvlc_reference_caffenet) .caffemodel",
                       description="Caffe's bvlc_alexnet or bvlc_reference_caffenet weights as a run folder of alexnet "
                                   "(needs protobuf: pip install 'alexnet[caffe]')")
    c.add_argument("caffemodel", help="the binary .caffemodel")
    c.add_argument("--deploy", default=None, metavar="PROTOTXT",
                   help="the net definition (deploy.prototxt) for the layers and the input size "
                        "(default: the definition inside the caffemodel)")
    c.add_argument("--mean", default=None, metavar="FILE",
                   help="Caffe's mean image: ilsvrc_2012_mean.npy or imagenet_mean.binaryproto (BGR, 256×256; "
                        "default: the per-channel mean 104, 117, 123)")
    c.add_argument("--synsets", default=None, metavar="TXT",
                   help="Caffe's synset_words.txt: the classes as WNIDs, so evaluate can check a dataset's classes "
                        "(default: torchvision's ImageNet class names, the same sorted-WNID order)")
    c.add_argument("--out", required=True, metavar="RUN", help="the run folder to write (new, empty, or an earlier import)")


def caffe_module() -> Any:
    """:mod:`alexnet.engine.caffe_weights`, or one line saying how to install protobuf."""
    return optional_engine_module("caffe_weights", "google", "protobuf", "reading a caffemodel", "caffe")


def _check_out(out: Path) -> None:
    """A new or empty folder, or one holding only an earlier import's files."""
    from alexnet.engine.checkpoint import WEIGHTS, written_by

    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --out")
    present = sorted(p.name for p in out.iterdir() if p.name != ".lock") if out.is_dir() else []
    if not present:
        return
    ours = (out / WEIGHTS).is_file() and written_by(out / WEIGHTS) == WRITTEN_BY
    other = [n for n in present if n not in (WEIGHTS, SUMMARY)]
    if not ours or other:
        what = f"holds {other[0]}, which" if ours else "holds files that"
        raise UserError(f"{out}: {what} 'alexnet import caffe' did not write; choose another --out")


def run(args: argparse.Namespace) -> int:
    from alexnet.engine import checkpoint as ckpt
    from alexnet.files import atomic_write_text, lock_folder, nonempty_path

    caffe = caffe_module()
    out = nonempty_path(args.out, "--out")
    src = Path(args.caffemodel)
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    for flag, value in (("--deploy", args.deploy), ("--mean", args.mean), ("--synsets", args.synsets)):
        if value is not None and not Path(value).is_file():
            raise UserError(f"{flag} {value}: no such file")
    _check_out(out)  # before the work, and again under the lock
    imported = caffe.import_caffe(src, Path(args.deploy) if args.deploy else None, Path(args.mean) if args.mean else None,
                                  Path(args.synsets) if args.synsets else None)
    with lock_folder(out):
        _check_out(out)
        ckpt.save_weights(imported.model, out / ckpt.WEIGHTS, imported.meta, imported.stats, written_by=WRITTEN_BY)
        atomic_write_text(out / SUMMARY, json.dumps({"written_by": WRITTEN_BY, **imported.summary}, indent=1) + "\n")
    opts = imported.meta["model_options"]
    print(f"{out}: alexnet with {', '.join(f'{k}={v}' for k, v in opts.items())} "
          f"from {src.name} ({imported.summary['format']} format), input {imported.meta['input_size']}×"
          f"{imported.meta['input_size']} BGR minus the {imported.summary['mean']} mean")
    return 0
