"""Which source a path is, and opening it: :func:`open_source` is where ``prepare`` (and
``download``) turn a path and an optional ``--format`` into a :class:`~alexnet.data.sources.base.Source`.
A new source is one more module in this package and one more branch here."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Mapping

from PIL import Image

from alexnet.data.sources import cifar, idx
from alexnet.data.sources.base import Source
from alexnet.data.sources.folder import FolderSource
from alexnet.data.sources.imagenet import (DEVKIT_TAR, TRAIN_TAR, VAL_TAR, ImageNetSource, is_imagenet_tree,
                                           is_official_folder, open_imagenet_tree)
from alexnet.errors import UserError

FORMATS = ("imagenet", "imagenet-tree", "folder", "cifar", "idx", "synthetic")


def open_source(src: str | os.PathLike[str], fmt: str | None = None, *, val_fraction: float | None = None,
                names: Mapping[str, str] | None = None) -> Source:
    """Detect (or take ``fmt``) and open a source; every refusal is a UserError, before any work."""
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format {fmt}: unknown; accepted: {', '.join(FORMATS)}")
    p = Path(src).expanduser()
    if not p.exists():
        raise UserError(f"{src}: no such file or folder")
    if p.is_file() and p.name in (TRAIN_TAR, VAL_TAR, DEVKIT_TAR):
        p = p.parent  # the three official files are read together
    if fmt is None:
        if is_official_folder(p):
            fmt = "imagenet"
        elif cifar.find(p) is not None:
            fmt = "cifar"
        elif idx.find(p):
            fmt = "idx"
        elif p.is_dir() and is_imagenet_tree(p):
            fmt = "imagenet-tree"
        elif p.is_dir() or (p.is_file() and tarfile.is_tarfile(p)):
            fmt = "folder"
        else:
            raise UserError(f"{src}: not a source this tool reads (ILSVRC-2012 archives folder, image-folder tree or "
                            f"tar, CIFAR pickles, IDX files); see --format")
    if val_fraction is not None and fmt not in ("folder", "imagenet-tree", "idx"):
        raise UserError(f"--val-fraction: only for folder trees and IDX files; {fmt} has its own validation set")
    if fmt == "imagenet":
        if not p.is_dir():
            raise UserError(f"{src}: give the folder holding {TRAIN_TAR}, {VAL_TAR} and {DEVKIT_TAR}")
        return ImageNetSource(p)
    if fmt == "cifar":
        found = cifar.find(p)
        if found is None:
            raise UserError(f"{src}: no cifar-10-python.tar.gz, cifar-100-python.tar.gz or their extracted folders")
        return cifar.CifarSource(found[1], variant=found[0])
    if fmt == "idx":
        if not p.is_dir():
            p = p.parent
        return idx.IdxSource(p, val_fraction=val_fraction)
    if fmt == "imagenet-tree":
        if not p.is_dir():
            raise UserError(f"{src}: an extracted ImageNet tree is a folder with train/<WNID>/")
        return open_imagenet_tree(p, names=names, val_fraction=val_fraction)
    if fmt == "folder":
        if p.is_file() and not tarfile.is_tarfile(p):
            raise UserError(f"{src}: neither a folder nor a tar archive")
        return FolderSource(p, val_fraction=val_fraction, names=names)
    raise UserError(f"--format {fmt}: give it as SRC 'synthetic'")  # pragma: no cover


def uniform_small_size(source: Source, largest: int, n: int = 32) -> tuple[int, int] | None:
    """A folder of small images of one size keeps that size (like CIFAR as PNGs): the size (H, W)
    when the first ``n`` training images all have it and neither side is above ``largest``."""
    sizes = set()
    for _, it in source.items("train"):
        if it.skip is not None or it.data is None:
            continue
        try:
            f = it.data if isinstance(it.data, str) else io.BytesIO(it.data)  # type: ignore[arg-type]
            with Image.open(f) as im:
                sizes.add((im.size[1], im.size[0]))
        except Exception:
            continue
        if len(sizes) > 1 or max(next(iter(sizes))) > largest:
            return None
        n -= 1
        if n == 0:
            break
    return next(iter(sizes)) if len(sizes) == 1 else None
