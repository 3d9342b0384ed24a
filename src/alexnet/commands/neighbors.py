"""``alexnet neighbors RUN --data D --query INDEX|IMAGE --out PNG [--k 6] [--split val]``: the
training images closest to a query in the last hidden layer (Figure 4, right).

§6.1: "If two images produce feature activation vectors with a small Euclidean separation, we can
say that the higher levels of the neural network consider them to be similar." The feature
vector is the input of the network's final ``nn.Linear``, captured with a forward hook: for
``alexnet`` the 4096-d output of fc7 after its ReLU (dropout is the identity at test time), for
``alexnet-cifar`` the flattened last conv block. Every image is seen through its central crop.
As in the paper, test images (``--split``, default val) query the training set.

A query is an index into ``--split`` or the path of an image file (read as the data was prepared:
shorter side rescaled, centre cropped); a query made only of digits is an index. ``--query`` may
be given several times: one row of the grid per query.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from alexnet.commands.common import at_least
from alexnet.errors import UserError

if TYPE_CHECKING:  # imported in the functions: the parser (alexnet --help) loads no torch
    import torch
    from torch import nn


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


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier's final ``nn.Linear``: its input is the last hidden layer."""
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__}: no fully connected layer to take features from")
    return linears[-1]


def hidden_features(model: nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """The last hidden layer's activations (N×D, float32) for already normalised crops."""
    import torch

    captured: list[torch.Tensor] = []
    handle = last_linear(model).register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
    try:
        with torch.no_grad():
            model(crops)
    finally:
        handle.remove()
    return captured[-1].flatten(1).float()  # N×D


def nearest(model: nn.Module, queries: torch.Tensor, ds: object, augment: object, *, k: int,
            batch_size: int = 128, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices), each Q×k, of the k images of ``ds`` nearest to each query feature
    vector (Q×D), closest first (no gradients: the features come from :func:`hidden_features`).
    Streams the dataset: memory is one batch, not N×D."""
    import torch

    from alexnet.data.loader import BatchLoader

    device = queries.device
    best_d = torch.full((queries.shape[0], 0), float("inf"), device=device)
    best_i = torch.zeros((queries.shape[0], 0), dtype=torch.long, device=device)
    for b in BatchLoader(ds, batch_size, shuffle=False, workers=workers):  # type: ignore[arg-type]
        f = hidden_features(model, augment.center(b.images.to(device)))  # type: ignore[attr-defined]
        # Q×B Euclidean distances, computed directly: the faster ||a||² + ||b||² − 2ab form loses
        # the precision that separates near neighbours (and gives an image a non-zero distance to itself).
        d = torch.cdist(queries, f, compute_mode="donot_use_mm_for_euclid_dist")
        cand_d = torch.cat([best_d, d], dim=1)
        cand_i = torch.cat([best_i, b.indices.to(device)[None].expand(len(queries), -1)], dim=1)
        kk = min(k, cand_d.shape[1])
        best_d, pos = cand_d.topk(kk, dim=1, largest=False, sorted=True)
        best_i = cand_i.gather(1, pos)
    return best_d.cpu(), best_i.cpu()


SOFTWARE = "alexnet neighbors"  # the PNG's Software field: how a rerun recognises its own earlier output


def run(args: argparse.Namespace) -> int:
    from alexnet.files import output_file
    from alexnet.report.figures import png_written_by

    with output_file(args.out, force=args.force, ours=lambda p: png_written_by(p, SOFTWARE)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from alexnet.data.format import PreparedDataset
    from alexnet.data.resolve import resolve_data
    from alexnet.engine.device import pick_device
    from alexnet.engine.inference import augment_for, load, read_image
    from alexnet.report.figures import plot_neighbors

    if args.k < 1:
        raise UserError(f"--k {args.k}: must be at least 1")
    trained = load(args.run, pick_device(args.device))
    data = args.data or trained.meta.get("data")
    if not data:
        raise UserError(f"{args.run}: no dataset recorded; pass --data")
    root = resolve_data(data, int(trained.meta["input_size"]))
    search = PreparedDataset(root, args.search_split)
    augment = augment_for(trained, search)
    query_ds: PreparedDataset | None = None

    images, labels = [], []
    for q in args.query:
        if q.isdigit():
            query_ds = query_ds or PreparedDataset(root, args.split)
            i = int(q)
            if i >= len(query_ds):
                raise UserError(f"--query {q}: {data}/{args.split} has {len(query_ds)} images (0–{len(query_ds) - 1})")
            img, lab = query_ds[i]
            images.append(img)
            labels.append(lab)
        else:
            images.append(read_image(q, search.image_size))
            labels.append(None)
    q_imgs = torch.stack(images)  # Q×3×H×W uint8
    device = next(trained.model.parameters()).device
    q_feat = hidden_features(trained.model, augment.center(q_imgs.to(device)))  # Q×D
    dist, idx = nearest(trained.model, q_feat, search, augment, k=args.k, batch_size=args.batch_size, workers=args.workers)

    k = idx.shape[1]
    nb_imgs = search.read_batch(idx.flatten().numpy()).view(len(args.query), k, 3, *search.image_size)  # Q×K×3×H×W
    nb_labels = torch.from_numpy(search.labels[idx.numpy()])  # Q×K
    names = search.class_names
    out = plot_neighbors(q_imgs, nb_imgs, Path(args.out),
                         query_labels=labels if all(lab is not None for lab in labels) else None,
                         neighbor_labels=nb_labels, class_names=names, software=SOFTWARE)
    for q, lab, ds_, is_ in zip(args.query, labels, dist, idx):
        head = f"query {q}" + (f" ({names[lab]})" if lab is not None else "")
        print(head + ": " + ", ".join(f"#{int(i)} {names[int(search.labels[int(i)])]} d={float(d):.3g}" for d, i in zip(ds_, is_)))
    print(out)
    return 0
