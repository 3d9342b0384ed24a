"""Figure 4, right: the training images closest to a query in the last hidden layer.

§6.1: "If two images produce feature activation vectors with a small Euclidean separation, we can
say that the higher levels of the neural network consider them to be similar." The feature
vector is the input of the network's final ``nn.Linear``, captured with a forward hook: for
``alexnet`` the 4096-d output of fc7 after its ReLU (dropout is the identity at test time), for
``alexnet-cifar`` the flattened last conv block. Every image is seen through its central crop.
As in the paper, test images query the training set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from alexnet.data.augment import Augment
from alexnet.data.format import PreparedDataset
from alexnet.data.loader import BatchLoader
from alexnet.engine.inference import Trained, augment_for, read_image
from alexnet.errors import UserError


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier's final ``nn.Linear``: its input is the last hidden layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__}: no fully connected layer to take features from")
    return linears[-1]


def hidden_features(model: nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """The last hidden layer's activations (N×D, float32) for already normalised crops."""
    captured: list[torch.Tensor] = []
    handle = last_linear(model).register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
    try:
        with torch.no_grad():
            model(crops)
    finally:
        handle.remove()
    return captured[-1].flatten(1).float()  # N×D


def nearest(model: nn.Module, queries: torch.Tensor, ds: PreparedDataset, augment: Augment, *, k: int,
            batch_size: int = 128, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices), each Q×k, of the k images of ``ds`` nearest to each query feature
    vector (Q×D), closest first (no gradients: the features come from :func:`hidden_features`).
    Streams the dataset: memory is one batch, not N×D."""
    device = queries.device
    best_d = torch.full((queries.shape[0], 0), float("inf"), device=device)
    best_i = torch.zeros((queries.shape[0], 0), dtype=torch.long, device=device)
    for b in BatchLoader(ds, batch_size, shuffle=False, workers=workers):
        f = hidden_features(model, augment.center(b.images.to(device)))
        # Q×B Euclidean distances, computed directly: the faster ||a||² + ||b||² − 2ab form loses
        # the precision that separates near neighbours (and gives an image a non-zero distance to itself).
        d = torch.cdist(queries, f, compute_mode="donot_use_mm_for_euclid_dist")
        cand_d = torch.cat([best_d, d], dim=1)
        cand_i = torch.cat([best_i, b.indices.to(device)[None].expand(len(queries), -1)], dim=1)
        kk = min(k, cand_d.shape[1])
        best_d, pos = cand_d.topk(kk, dim=1, largest=False, sorted=True)
        best_i = cand_i.gather(1, pos)
    return best_d.cpu(), best_i.cpu()


@dataclass
class Neighbors:
    """The queries and, per query, its K nearest images of the searched split, closest first."""

    query_images: torch.Tensor  # Q×3×H×W uint8
    query_labels: list[int | None]  # None for a query read from an image file
    images: torch.Tensor  # Q×K×3×H×W uint8
    labels: torch.Tensor  # Q×K class indices
    distances: torch.Tensor  # Q×K
    indices: torch.Tensor  # Q×K indices into the searched split
    class_names: list[str]


def search(trained: Trained, root: Path, queries: Sequence[str], *, name: str, split: str = "val",
           search_split: str = "train", k: int = 6, batch_size: int = 128, workers: int = 0) -> Neighbors:
    """The ``k`` images of ``root``'s ``search_split`` nearest to each query in ``trained``'s last
    hidden layer. A query is an index into ``split`` or the path of an image file (read as the data
    was prepared: shorter side rescaled, centre cropped); a query made only of digits is an index.
    ``name`` is how messages call the dataset."""
    search_ds = PreparedDataset(root, search_split)
    augment = augment_for(trained, search_ds)
    query_ds: PreparedDataset | None = None

    images, labels = [], []
    for q in queries:
        if q.isdigit():
            query_ds = query_ds or PreparedDataset(root, split)
            i = int(q)
            if i >= len(query_ds):
                raise UserError(f"--query {q}: {name}/{split} has {len(query_ds)} images (0–{len(query_ds) - 1})")
            img, lab = query_ds[i]
            images.append(img)
            labels.append(lab)
        else:
            images.append(read_image(q, search_ds.image_size))
            labels.append(None)
    q_imgs = torch.stack(images)  # Q×3×H×W uint8
    device = next(trained.model.parameters()).device
    q_feat = hidden_features(trained.model, augment.center(q_imgs.to(device)))  # Q×D
    dist, idx = nearest(trained.model, q_feat, search_ds, augment, k=k, batch_size=batch_size, workers=workers)

    kk = idx.shape[1]
    nb_imgs = search_ds.read_batch(idx.flatten().numpy()).view(len(queries), kk, 3, *search_ds.image_size)  # Q×K×3×H×W
    nb_labels = torch.from_numpy(search_ds.labels[idx.numpy()])  # Q×K
    return Neighbors(q_imgs, labels, nb_imgs, nb_labels, dist, idx, search_ds.class_names)
