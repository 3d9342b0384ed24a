"""Our loader against torchvision's reference recipe, as training consumes them: images per second
of JPEG decode by the loader plus the paper's augmentation (§4.1: random 224 crop, flip, PCA colour
noise, mean subtraction) on the training device, for our :class:`~alexnet.data.loader.BatchLoader`
and for torchvision's recipe (:mod:`alexnet.perf.reference`: ImageFolder + PIL RandomResizedCrop(224),
RandomHorizontalFlip, ToTensor, Normalize in a DataLoader with the same worker count) reading *the
same* prepared 256×256 JPEGs written out as an image folder. Both are timed only after their
prefetch queues have been drained (a DataLoader prefetches workers × prefetch_factor batches while
idle: timing those measures nothing). Also ``prepare``'s throughput per core on ImageNet-sized
(~500×375) JPEGs. ``alexnet bench data`` and ``benchmarks/data_loader.py`` print and record it."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from alexnet.data.augment import Augment
from alexnet.data.format import PreparedDataset
from alexnet.data.jpeg import jpeg_bytes
from alexnet.data.loader import BatchLoader, default_workers
from alexnet.engine.device import pick_device
from alexnet.errors import UserError
from alexnet.perf.fixtures import make_photo_dataset, photo_crops, write_image_folder
from alexnet.perf.prepare import prepare_throughput
from alexnet.perf.reference import reference_dataset, reference_epoch
from alexnet.perf.timing import images_per_second


def _epochs(make_iter: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        empty = True
        for item in make_iter(epoch):
            empty = False
            yield item
        if empty:
            raise UserError("the dataset holds no full batch; lower --batch-size")
        epoch += 1


def _rate(batches: Iterator[tuple[torch.Tensor, int]], warmup: int, timed: int, device: torch.device) -> float:
    try:
        return images_per_second(batches, warmup, timed, device)
    except ValueError as e:
        raise UserError(str(e)) from None


def ours_rate(ds: PreparedDataset, device: torch.device, workers: int, batch_size: int, warmup: int, timed: int, *,
              decode: str = "cpu", augment: bool = True) -> tuple[float, dict[str, Any]]:
    """Our loader + the paper's training augmentation on ``device`` (uint8 only without ``augment``)."""
    loader = BatchLoader(ds, batch_size, shuffle=True, seed=0, workers=workers, device=device,
                         pin_memory=device.type == "cuda", decode=decode)
    aug = Augment.from_stats(ds.stats(), 224, input_norm="mean_image") if augment else None

    def one_epoch(epoch: int) -> Iterator[tuple[torch.Tensor, int]]:
        loader.set_epoch(epoch)
        for b in loader:
            x = b.images.to(device, non_blocking=True)
            if aug is not None:
                x = aug.train(x, b.indices, epoch)  # N×3×224×224 float32, as the training step computes it
            yield x, len(b.indices)

    rate = _rate(_epochs(one_epoch), warmup, timed, device)
    info = {"decode": decode, "gpu_fraction": loader.gpu_fraction, "prefetch_batches": loader.workers * loader.prefetch}
    loader.close()
    return rate, info


def reference_rate(folder: Path, device: torch.device, workers: int, batch_size: int, warmup: int, timed: int) -> float:
    """torchvision's ImageNet training recipe on an image folder (:mod:`alexnet.perf.reference`)."""
    ds = reference_dataset(folder)

    def one_epoch(epoch: int) -> Iterator[tuple[torch.Tensor, int]]:
        for x, y in reference_epoch(ds, epoch, batch_size, workers, device.type == "cuda"):
            yield x.to(device, non_blocking=True), len(y)

    return _rate(_epochs(one_epoch), warmup, timed, device)


def prepare_rate(n: int, seed: int = 0) -> tuple[float, str]:
    """``prepare``'s per-core throughput on ImageNet-sized (500×375, q90) real-photo JPEGs: its own
    per-image work (decode, resize, crop, encode, statistics) on one worker."""
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-prep-") as tmp:
        files = []
        for i, img in enumerate(photo_crops(n, (375, 500), seed + 7)):
            files.append(Path(tmp) / f"{i:05d}.JPEG")
            files[-1].write_bytes(jpeg_bytes(img))
        r = prepare_throughput(files, workers=1)
    return float(r["img_s_per_core"]), "alexnet.perf.prepare.prepare_throughput (1 worker, real-photo 500×375 q90)"


def loader_vs_reference(*, data: str | os.PathLike[str] | None = None, make_photos: int | None = None,
                        work_dir: str | os.PathLike[str] | None = None, workers: int | None = None,
                        device: str | None = None, decode: str = "cpu", batch_size: int = 256, batches: int = 8,
                        warmup: int | None = None, uint8: bool = True, prepare_images: int = 64,
                        seed: int = 0) -> dict[str, Any]:
    """One row: our loader (``ours_img_s``; ``ours_uint8_img_s`` for the uint8 batches alone with
    ``uint8``) against the reference recipe (``reference_img_s``, ``ratio``) on the training split of
    the prepared JPEG dataset ``data``, or of ``make_photos`` real-photo JPEGs built in ``work_dir``
    (default: enough that no timing spans an epoch; kept there for the next call), and ``prepare``
    per core on ``prepare_images`` ImageNet-sized JPEGs (0: skipped). ``workers`` None: the
    loader's default; ``warmup`` None: 2 × workers + 1 batches (both queues drained)."""
    dev = pick_device(device or "auto")
    if batch_size < 1 or batches < 1:
        raise UserError("--batch-size and --batches must be at least 1")
    own_tmp = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="alexnet-bench-")) if own_tmp else Path(work_dir)  # type: ignore[arg-type]
    try:
        workers_guess = workers if workers is not None else default_workers("jpeg")
        if data:
            ds = PreparedDataset(data, "train")
            source = str(data)
        else:
            photos = work / "photos"
            n = make_photos or ((warmup or 2 * max(workers_guess, 1) + 1) + batches + 1) * batch_size
            if not (photos / "meta.json").exists():
                make_photo_dataset(photos, n, seed=seed)
            ds = PreparedDataset(photos, "train")
            source = f"--make-photos {n} (scikit-image photos, random crops, 256×256 q90)"
        if ds.encoding != "jpeg":
            raise UserError(f"{data}: stores raw records; bench data measures JPEG datasets")
        workers = default_workers(ds.encoding) if workers is None else workers
        # Drain the prefetch queues before timing: ours holds workers × 2 batches, the DataLoader
        # workers × prefetch_factor(2); one more for the pipeline to reach its steady state.
        warmup = warmup if warmup is not None else 2 * max(workers, 1) + 1
        folder = work / "imagefolder"
        if not folder.exists():
            write_image_folder(ds, folder)
        row: dict[str, Any] = {"workers": workers, "batch_size": batch_size, "device": str(dev),
                               "batches": batches, "warmup_batches": warmup, "dataset": source,
                               "num_images": len(ds), "images": f"prepared {ds.image_size[0]}×{ds.image_size[1]} JPEG",
                               "mean_jpeg_kb": round(float(ds.index[:, 1].mean()) / 1024, 1)}
        if len(ds) < (warmup + batches) * batch_size:
            row["note_epochs"] = "fewer images than warmup+batches need: timing spans epochs (loader restarts included)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's decode deprecation notice
            ours, info = ours_rate(ds, dev, workers, batch_size, warmup, batches, decode=decode)
            row.update(info)
            row["ours_img_s"] = round(ours, 1)
            if uint8:
                u8, _ = ours_rate(ds, dev, workers, batch_size, warmup, batches, decode=decode, augment=False)
                row["ours_uint8_img_s"] = round(u8, 1)
            ref = reference_rate(folder, dev, workers, batch_size, warmup, batches)
        row["reference_img_s"] = round(ref, 1)
        row["ratio"] = round(ours / ref, 2)
        if prepare_images > 0:
            rate, how = prepare_rate(prepare_images, seed)
            row["prepare_img_s_per_core"] = round(rate, 1)
            row["prepare_method"] = how
        return row
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


__all__ = ["loader_vs_reference", "ours_rate", "prepare_rate", "reference_rate"]
