"""``alexnet neighbors RUN --data D --query INDEX|IMAGE --out PNG [--k 6] [--split val]``: the
training images closest to a query in the last hidden layer (Figure 4, right; the search is
:mod:`alexnet.engine.neighbors`, the figure :func:`alexnet.report.figures.plot_neighbors`). As in
the paper, test images (``--split``, default val) query the training set.

A query is an index into ``--split`` or the path of an image file (read as the data was prepared:
shorter side rescaled, centre cropped); a query made only of digits is an index. ``--query`` may
be given several times: one row of the grid per query.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alexnet.commands.common import at_least
from alexnet.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder or weights file")
    p.add_argument("--data", default=None, help="dataset (default: the one the run was trained on)")
    p.add_argument("--query", action="append", required=True, metavar="INDEX|IMAGE",
                   help="an index into --split or an image file; repeat for several rows")
    p.add_argument("--out", required=True, metavar="PNG", help="the PNG to write (an existing file only if an earlier "
                                                                 "'alexnet neighbors' wrote it, or with --force)")
    p.add_argument("--force", action="store_true", help="replace whatever file is at --out")
    p.add_argument("--k", type=at_least(1), default=6, help="neighbours per query (default 6)")
    p.add_argument("--split", default="val", help="split the INDEX queries come from (default val)")
    p.add_argument("--search-split", default="train", help="split searched for neighbours (default train, as the paper)")
    p.add_argument("--batch-size", type=at_least(1), default=128)
    p.add_argument("--workers", type=at_least(0), default=0, help="loader worker processes (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")


SOFTWARE = "alexnet neighbors"  # the PNG's Software field: how a rerun recognises its own earlier output


def run(args: argparse.Namespace) -> int:
    from alexnet.files import output_file
    from alexnet.report.figures import png_written_by

    with output_file(args.out, force=args.force, ours=lambda p: png_written_by(p, SOFTWARE)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from alexnet.data.resolve import resolve_data
    from alexnet.engine.device import pick_device
    from alexnet.engine.inference import load
    from alexnet.engine.neighbors import search
    from alexnet.report.figures import plot_neighbors

    if args.k < 1:
        raise UserError(f"--k {args.k}: must be at least 1")
    trained = load(args.run, pick_device(args.device))
    data = args.data or trained.meta.get("data")
    if not data:
        raise UserError(f"{args.run}: no dataset recorded; pass --data")
    root = resolve_data(data, int(trained.meta["input_size"]))
    nb = search(trained, root, args.query, name=data, split=args.split, search_split=args.search_split, k=args.k,
                batch_size=args.batch_size, workers=args.workers)
    labels = nb.query_labels
    names = nb.class_names
    out = plot_neighbors(nb.query_images, nb.images, Path(args.out),
                         query_labels=labels if all(lab is not None for lab in labels) else None,
                         neighbor_labels=nb.labels, class_names=names, software=SOFTWARE)
    for q, lab, ds_, is_, ls_ in zip(args.query, labels, nb.distances, nb.indices, nb.labels):
        head = f"query {q}" + (f" ({names[lab]})" if lab is not None else "")
        print(head + ": " + ", ".join(f"#{int(i)} {names[int(c)]} d={float(d):.3g}" for d, i, c in zip(ds_, is_, ls_)))
    print(out)
    return 0
