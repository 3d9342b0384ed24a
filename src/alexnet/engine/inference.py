"""Load trained models (a run folder or a weights file) and the augmentation they were trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet import models
from alexnet.data.augment import Augment
from alexnet.data.format import PreparedDataset
from alexnet.engine import checkpoint as ckpt
from alexnet.errors import UserError


@dataclass
class Trained:
    model: nn.Module
    meta: dict[str, Any]  # model, model_options, num_classes, classes, class_names, input_size, input_norm, data
    source: Path

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or self.meta.get("classes") or [str(i) for i in range(self.meta["num_classes"])])


def weights_path(path: Path) -> Path:
    if path.is_dir():
        w = path / ckpt.WEIGHTS
        if not w.is_file():
            raise UserError(f"{path}: no {ckpt.WEIGHTS} (the run has not finished; evaluate a finished run or resume it)")
        return w
    if not path.exists():
        raise UserError(f"{path}: no such run folder or weights file")
    return path


def load(path: str | Path, device: torch.device | str = "cpu") -> Trained:
    """A run folder, a ``.safetensors`` file written by this project, or (see issue 5) torchvision's
    ``alexnet-owt-*.pth``."""
    p = weights_path(Path(path))
    if p.suffix in (".pth", ".pt"):
        from alexnet.engine.torchvision_weights import load_torchvision  # type: ignore[import-not-found]

        model, meta = load_torchvision(p)
    else:
        sd, meta = ckpt.read_weights(p)
        if "model" not in meta:
            raise UserError(f"{p}: safetensors file without alexnet metadata (model name, classes)")
        try:
            model = models.create(meta["model"], meta["num_classes"], **meta.get("model_options", {}))
            model.load_state_dict(sd)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"{p}: weights do not fit model {meta['model']!r} ({str(e).splitlines()[0][:200]})") from None
    model.to(device).eval()
    return Trained(model, meta, Path(path))


def augment_for(trained: Trained, ds: PreparedDataset) -> Augment:
    """Test-time crops with the dataset's mean image and the model's input normalisation."""
    return Augment.from_stats(ds.stats(), trained.meta.get("input_size", models.info(trained.meta["model"]).input_size),
                              input_norm=trained.meta.get("input_norm", "mean_image"))
