"""Datasets for timing, built on the spot: real-photo JPEGs (random crops of scikit-image's bundled
colour photographs, rescaled and flipped: every image distinct, decoding at real speed), or, without
scikit-image, photo-like scenes from the synthetic source; as a prepared dataset and as an image
folder of the same bytes (for torchvision's reference recipe). And ImageNet-shaped photo-like JPEGs
(:func:`photo_like_jpegs`) for timing ``prepare`` itself."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from alexnet.data.format import PreparedDataset
from alexnet.data.jpeg import jpeg_bytes
from alexnet.data.processes import context, init_worker
from alexnet.data.sources import synthetic
from alexnet.data.writer import Chunk, DatasetWriter, encode_chunk, write_split
from alexnet.errors import UserError

# scikit-image's bundled colour photographs (no download needed).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle")


def source_photos() -> list[np.ndarray]:
    """scikit-image's bundled colour photographs as uint8 H×W×3 arrays."""
    try:
        import skimage.data as skd  # optional (the baselines extra); imported only where photos are drawn
    except ImportError:
        raise UserError("real-photo fixtures need scikit-image (pip install scikit-image)") from None
    out = []
    for name in PHOTOS:
        img = getattr(skd, name)()
        for im in img[:2] if isinstance(img, tuple) else (img,):  # stereo_motorcycle: a left/right pair
            if im.ndim == 3 and im.shape[2] == 3:
                out.append(np.ascontiguousarray(im))
    return out


def photos_available() -> bool:
    try:
        return len(source_photos()) > 0
    except Exception:  # noqa: BLE001 - no scikit-image, or its data missing: use the synthetic kind
        return False


def photo_crops(n: int, size: tuple[int, int], seed: int = 0) -> Iterator[np.ndarray]:
    """``n`` uint8 H×W×3 crops of real photos: a random region of the target aspect ratio
    covering 30–100% of the photo's short side, resized (antialiased) and flipped at random."""
    srcs = source_photos()
    rng = np.random.default_rng(seed)
    th, tw = size
    for _ in range(n):
        im = srcs[int(rng.integers(len(srcs)))]
        h, w = im.shape[:2]
        ch = int(min(h, w * th / tw) * rng.uniform(0.3, 1.0))
        cw = int(ch * tw / th)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        p = Image.fromarray(im[y : y + ch, x : x + cw]).resize((tw, th), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            p = p.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield np.asarray(p)


def _images(kind: str, n: int, size: tuple[int, int], seed: int, start: int) -> Iterator[np.ndarray]:
    if kind == "photos":
        yield from photo_crops(n, size, seed)
        return
    imgs, _ = synthetic.generate(n, max(size), seed, start=start)  # photo-like scenes, square
    for im in imgs:
        if im.shape[:2] != size:
            im = np.asarray(Image.fromarray(im).resize((size[1], size[0]), Image.Resampling.BILINEAR))
        yield im


def _chunk(task: tuple[str, int, tuple[int, int], int, int, int, bool, int]) -> Chunk:
    """One chunk of images as JPEG records, labelled ``i % classes`` by their position ``i``."""
    kind, n, size, seed, start, quality, stats, classes = task
    labels = [i % classes for i in range(start, start + n)]
    return encode_chunk(_images(kind, n, size, seed, start), labels, "jpeg", quality, stats=stats, ordinal=start)


def jpeg_chunks(n: int, size: tuple[int, int], *, kind: str = "photos", seed: int = 0, procs: int = 1,
                quality: int = 90, stats: bool = False, classes: int = 10) -> Iterator[Chunk]:
    """``n`` JPEGs of ``size`` (H, W) in chunks of (records, labels ``i % classes``, statistics
    sums when ``stats``), drawn by ``procs`` processes (forked: call this before CUDA is initialised)."""
    per = max(1, math.ceil(n / max(1, 4 * procs)))  # 4 chunks per process: balanced
    tasks = [(kind, min(per, n - s), size, seed * 1_000_003 + s, s, quality, stats, classes) for s in range(0, n, per)]
    if procs <= 1:
        yield from map(_chunk, tasks)
        return
    # The children run numpy, Pillow and the JPEG encoder (no CUDA), one torch thread each.
    with context().Pool(procs, initializer=init_worker) as pool:
        yield from pool.imap(_chunk, tasks)


def make_photo_dataset(out: str | os.PathLike[str], n: int, *, size: int = 256, n_val: int = 0, classes: int = 10,
                       quality: int = 90, seed: int = 0, kind: str = "photos", procs: int = 1) -> Path:
    """A prepared dataset (JPEG records) of ``n`` training and ``n_val`` validation images of
    ``size``×``size`` (``kind`` "photos" or "synthetic"); labels are ``i % classes`` (these are for
    timing, not learning)."""
    if n < 1:
        raise UserError(f"{n} images: need at least one")
    names = [f"class{c}" for c in range(classes)]
    source: dict[str, Any] = {"kind": "bench-photos" if kind == "photos" else "bench-synthetic", "seed": seed}
    if kind == "photos":
        source["photos"] = list(PHOTOS)
    with DatasetWriter(Path(out), names, source=source) as dw:
        for split, count, s in (("train", n, seed), ("val", n_val, seed + 1)):
            if count:
                train = split == "train"
                chunks = jpeg_chunks(count, (size, size), kind=kind, seed=s, procs=procs, quality=quality, stats=train,
                                     classes=classes)
                write_split(dw, split, "jpeg", (size, size), chunks, stats=train)
        return dw.commit()


def write_image_folder(ds: PreparedDataset, out: Path) -> Path:
    """The prepared JPEG records, byte for byte, as an ImageFolder tree ``out/<class>/<i>.jpg``."""
    if ds.encoding != "jpeg":
        raise UserError(f"{ds.root}: the reference recipe reads JPEG files; this dataset stores raw records")
    classes = ds.classes
    for c in sorted(set(ds.labels.tolist())):
        (out / classes[c]).mkdir(parents=True, exist_ok=True)
    for i in range(len(ds)):
        (out / classes[int(ds.labels[i])] / f"{i:07d}.jpg").write_bytes(ds.record(i).tobytes())
    return out


def make_image_folder(out: Path, n: int, size: tuple[int, int], *, kind: str = "photos", seed: int = 0,
                      procs: int = 1, classes: int = 10) -> Path:
    """An ImageFolder tree ``out/class<c>/<i>.jpg`` of ``n`` JPEGs (q90) of ``size`` (H, W)."""
    for c in range(classes):
        (out / f"class{c}").mkdir(parents=True, exist_ok=True)
    i = 0
    for records, labels, _ in jpeg_chunks(n, size, kind=kind, seed=seed, procs=procs, classes=classes):
        for rec, label in zip(records, labels):
            (out / f"class{label}" / f"{i:07d}.jpg").write_bytes(rec)
            i += 1
    return out


def photo_like_jpegs(n: int, size: tuple[int, int] = (500, 375), quality: int = 90, seed: int = 0) -> list[bytes]:
    """JPEGs shaped like ImageNet's (500×375, about 90 kB at quality 90; ImageNet's average is
    ~110 kB): smooth colour regions, edges and texture noise, so the decoder does a photo's work."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for _ in range(n):
        base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        mid = Image.fromarray(rng.integers(0, 256, (h // 12, w // 12, 3), dtype=np.uint8)).resize(
            (w, h), Image.Resampling.BILINEAR)
        a = 0.6 * np.asarray(base, np.float32) + 0.4 * np.asarray(mid, np.float32) + rng.normal(0, 16, (h, w, 3))
        out.append(jpeg_bytes(np.clip(a, 0, 255).astype(np.uint8), quality))
    return out


__all__ = ["PHOTOS", "jpeg_chunks", "make_image_folder", "make_photo_dataset", "photo_crops", "photo_like_jpegs",
           "photos_available", "source_photos", "write_image_folder"]
