"""PyTorch ``.pth``/``.pt`` weights as models: torchvision's AlexNet file (``alexnet-owt-7be5be79.pth``,
a plain state_dict of ``torchvision.models.alexnet``) and this project's own training checkpoints
(``RUN/checkpoints/ckpt-*.pt``).

Every file is opened with ``torch.load(weights_only=True)`` (through
:func:`alexnet.engine.checkpoint.load_checkpoint`): tensors and primitives only, so a ``.pth``
crafted to run code while unpickling (a ``__reduce__`` calling ``os.system``) is refused with one
line and its code never runs.

torchvision's weights are Krizhevsky's 2014 "one weird trick" network (our ``alexnet-owt``, same
state_dict keys and shapes), trained on ILSVRC-2012 with torchvision's preprocessing: shorter side
resized to 256, central 224×224 crop, per-channel ImageNet mean/std normalisation. Its 1000
outputs are the ILSVRC-2012 classes in sorted-WNID order (index 0 is n01440764, tench); their
names ship with torchvision, so they are available offline. The WNIDs themselves do not ship with
any installed package, so a torchvision model's class identifiers ("label") are those names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.engine import checkpoint as ckpt
from alexnet.errors import UserError

MODEL = "alexnet-owt"
# torchvision's ImageClassification preset for these weights: resize 256, crop 224, mean/std.
IMAGE_SIZE = 256
INPUT_SIZE = 224
INPUT_NORM = "mean_std"


def imagenet_categories() -> list[str]:
    """The 1000 ILSVRC-2012 class names in sorted-WNID order, as torchvision ships them."""
    from torchvision.models import AlexNet_Weights

    cats = list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(cats) == 1000, "torchvision's ImageNet category list changed"
    return cats


def torchvision_meta(num_classes: int) -> dict[str, Any]:
    """The metadata our own weights carry, filled in for torchvision's file."""
    names = imagenet_categories() if num_classes == 1000 else [str(i) for i in range(num_classes)]
    return {
        "model": MODEL,
        "model_options": {},
        "num_classes": num_classes,
        "classes": names,  # no WNIDs offline: the names are the identifiers
        "class_names": names,
        "input_size": INPUT_SIZE,
        "input_norm": INPUT_NORM,
        "image_size": [IMAGE_SIZE, IMAGE_SIZE],
        "data": None,
        "source": "torchvision",
    }


def _state_dict(obj: dict[str, Any], path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state_dict, our metadata or None) from what ``torch.load`` returned."""
    meta = None
    if isinstance(obj.get("model"), dict) and "meta" in obj:  # our training checkpoint (engine/resume.py)
        sd = obj["model"]
        try:
            meta = json.loads(obj["meta"]) if isinstance(obj["meta"], str) else dict(obj["meta"])
        except (ValueError, TypeError):
            raise UserError(f"{path}: checkpoint with unreadable metadata") from None
    elif isinstance(obj.get("state_dict"), dict):  # a common wrapping of a plain state_dict
        sd = obj["state_dict"]
    else:
        sd = obj
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad or not sd:
        raise UserError(f"{path}: not a state_dict of tensors" + (f" ({bad[0]!r} is a {type(sd[bad[0]]).__name__})" if bad else " (empty)"))
    # Weights saved from a DataParallel / DDP wrapper carry a "module." prefix on every key.
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, meta


def load_torchvision(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model and its metadata from a ``.pth``/``.pt`` file (see the module docstring)."""
    obj = ckpt.load_checkpoint(Path(path), map_location="cpu")  # weights_only=True; UserError if refused
    sd, meta = _state_dict(obj, path)
    if meta is None:
        last = sd.get("classifier.6.weight")
        if last is None or last.ndim != 2:
            raise UserError(f"{path}: not torchvision AlexNet weights (no classifier.6.weight; "
                            f"keys start {', '.join(list(sd)[:3])})")
        meta = torchvision_meta(int(last.shape[0]))
    model = ckpt.model_from_weights(meta, sd, path)
    return model, meta
