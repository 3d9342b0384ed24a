"""torchvision's ImageNet training recipe for the data, the yardstick of our loader: ImageFolder +
PIL RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize in a DataLoader."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from alexnet.data.augment import IMAGENET_MEAN, IMAGENET_STD

PREFETCH = 2  # DataLoader's default prefetch_factor
RECIPE = "PIL RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize"


def reference_dataset(folder: str | Path) -> datasets.ImageFolder:
    tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return datasets.ImageFolder(str(folder), tf)


def reference_epoch(ds: Any, epoch: int, batch_size: int, workers: int, pin_memory: bool) -> Iterator[Any]:
    """An iterator over one shuffled epoch of (images, labels) batches (full batches only)."""
    dl = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                    pin_memory=pin_memory, generator=torch.Generator().manual_seed(epoch))
    return iter(dl)


__all__ = ["PREFETCH", "RECIPE", "reference_dataset", "reference_epoch"]
