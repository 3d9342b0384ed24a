"""``alexnet predict RUN_OR_WEIGHTS IMAGE... [--json] [--ten-crop] [--top K]``: the most probable
classes of image files, with names and probabilities (Figure 4, left, as text).

Each image is read as the model's data was prepared (§2: shorter side rescaled to the stored size,
256 for ImageNet, central square cropped), then classified from its central crop or, with
``--ten-crop``, from the mean softmax over the four corner and centre patches and their
reflections (§4.1).

``--json`` prints a list, one object per image::

    {"image": PATH, "top5": [{"index": I, "label": ID, "name": NAME, "prob": P}, ...]}

most probable first; ``index`` is the model's output unit, ``label`` the class identifier it was
trained with (the WNID for prepared ImageNet, the folder name for folder datasets; torchvision's
weights carry no WNIDs, so there it is the class name), ``name`` the readable class name.
``--top K`` sets how many entries the list holds (default 5).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from alexnet.commands.common import at_least
from alexnet.errors import UserError

if TYPE_CHECKING:  # imported in the functions: the parser (alexnet --help) loads no torch
    import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_OR_WEIGHTS", help="run folder, .safetensors, or torchvision's alexnet-owt-*.pth")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    p.add_argument("--ten-crop", action="store_true", help="§4.1: average the softmax over 10 patches")
    p.add_argument("--top", type=at_least(1), default=5, metavar="K", help="how many classes per image (default 5)")
    p.add_argument("--data", default=None, help="the training set, for models that subtract its mean image "
                   "(default: the dataset recorded in the run)")
    p.add_argument("--batch-size", type=at_least(1), default=64)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")


def top_classes(probs: torch.Tensor, classes: list[str], names: list[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row of ``probs`` (N×C), the k most probable classes, most probable first (ties by index)."""
    import torch

    k = min(k, probs.shape[1])
    # A stable descending sort: equal probabilities keep class order, so output is deterministic.
    order = torch.sort(probs, dim=1, descending=True, stable=True).indices[:, :k]  # N×k
    out = []
    for row, idx in zip(probs, order):
        out.append([{"index": int(i), "label": classes[i] if i < len(classes) else str(int(i)),
                     "name": names[i] if i < len(names) else str(int(i)), "prob": float(row[i])} for i in idx.tolist()])
    return out


def predict_files(trained: Any, paths: list[str], *, data: str | None = None, ten_crop: bool = False,
                  batch_size: int = 64) -> torch.Tensor:
    """Softmax probabilities (N×C, float32, on the CPU) for image files."""
    import torch

    from alexnet.engine.evaluate import Precision, predict_probs
    from alexnet.engine.inference import file_augment, image_size_for, read_image

    size = image_size_for(trained)
    images = [read_image(p, size) for p in paths]  # every file checked before any compute
    augment = file_augment(trained, data)
    device = next(trained.model.parameters()).device
    prec = Precision(device)
    out = []
    for i in range(0, len(images), batch_size):
        batch = torch.stack(images[i : i + batch_size])  # B×3×H×W uint8
        out.append(predict_probs(trained.model, batch, augment, prec, ten_crop).cpu())
    return torch.cat(out)


def run(args: argparse.Namespace) -> int:
    from alexnet.engine.device import pick_device
    from alexnet.engine.inference import load

    if args.top < 1:
        raise UserError(f"--top {args.top}: must be at least 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    trained = load(args.run, pick_device(args.device))
    probs = predict_files(trained, list(args.images), data=args.data, ten_crop=args.ten_crop, batch_size=args.batch_size)
    classes = list(trained.meta.get("classes") or [])
    tops = top_classes(probs, classes, trained.class_names, args.top)
    if args.json:
        print(json.dumps([{"image": str(p), "top5": t} for p, t in zip(args.images, tops)]))
        return 0
    for path, top in zip(args.images, tops):
        print(path)
        for rank, e in enumerate(top, 1):
            ident = f"{e['label']}  " if e["label"] != e["name"] else ""
            print(f"  {rank}. {100 * e['prob']:6.2f}%  {ident}{e['name']}")
    return 0
