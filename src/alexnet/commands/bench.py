"""``alexnet bench data|model``: throughput measurements.

``bench data``: images per second *as training consumes them* — JPEG decode by the
loader plus the paper's augmentation (§4.1: random 224 crop, flip, PCA colour noise, mean
subtraction) on the training device — for our loader, and for torchvision's reference recipe
(ImageFolder + PIL RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize in a
DataLoader with the same worker count) reading *the same* prepared 256×256 JPEGs written out as an
image folder. Both are timed only after their prefetch queues have been drained (a DataLoader
prefetches workers × prefetch_factor batches while idle: timing those measures nothing). It also
times ``prepare`` per core on ImageNet-sized (~500×375) JPEGs.

``bench model``: throughput of the training step ``alexnet train`` runs (:class:`alexnet.engine.fast_step.FastStep`:
augmentation on the device, forward, loss, backward, update) on a random uint8 batch already on the device.

Photos: ``--make-photos N`` builds on the spot a prepared dataset of N real-photo 256×256 JPEGs
(q90, :mod:`alexnet.perf.fixtures`), since ``synthetic`` is not a JPEG dataset and real photos decode
at real speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from alexnet.commands.common import at_least
from alexnet.errors import UserError

if TYPE_CHECKING:  # imported in the functions: the parser (alexnet --help) loads no torch
    import torch


# ---------------------------------------------------------------------------------------------
# bench data


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
    from alexnet.perf.timing import images_per_second

    try:
        return images_per_second(batches, warmup, timed, device)
    except ValueError as e:
        raise UserError(str(e)) from None


def bench_ours(ds: Any, device: torch.device, workers: int, batch_size: int, warmup: int, timed: int, *,
               decode: str = "cpu", augment: bool = True) -> tuple[float, dict[str, Any]]:
    """Our loader + the paper's training augmentation on ``device`` (uint8 only without ``augment``)."""
    import torch

    from alexnet.data.augment import Augment
    from alexnet.data.loader import BatchLoader

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


def bench_reference(folder: Path, device: torch.device, workers: int, batch_size: int, warmup: int, timed: int) -> float:
    """torchvision's ImageNet training recipe on an image folder (:mod:`alexnet.perf.reference`)."""
    import torch

    from alexnet.perf.reference import reference_dataset, reference_epoch

    ds = reference_dataset(folder)

    def one_epoch(epoch: int) -> Iterator[tuple[torch.Tensor, int]]:
        for x, y in reference_epoch(ds, epoch, batch_size, workers, device.type == "cuda"):
            yield x.to(device, non_blocking=True), len(y)

    return _rate(_epochs(one_epoch), warmup, timed, device)


def bench_prepare(n: int, seed: int = 0) -> tuple[float, str]:
    """``prepare``'s per-core throughput on ImageNet-sized (500×375, q90) real-photo JPEGs: its own
    per-image work (decode, resize, crop, encode, statistics) on one worker."""
    from alexnet.data.jpeg import jpeg_bytes
    from alexnet.perf.fixtures import photo_crops
    from alexnet.perf.prepare import prepare_throughput

    with tempfile.TemporaryDirectory(prefix="alexnet-bench-prep-") as tmp:
        files = []
        for i, img in enumerate(photo_crops(n, (375, 500), seed + 7)):
            files.append(Path(tmp) / f"{i:05d}.JPEG")
            files[-1].write_bytes(jpeg_bytes(img))
        r = prepare_throughput(files, workers=1)
    return float(r["img_s_per_core"]), "alexnet.perf.prepare.prepare_throughput (1 worker, real-photo 500×375 q90)"


def run_data(args: argparse.Namespace) -> dict[str, Any]:
    from alexnet.data.format import PreparedDataset
    from alexnet.data.loader import default_workers
    from alexnet.engine.device import pick_device
    from alexnet.perf.fixtures import make_photo_dataset, write_image_folder

    device = pick_device(args.device or "auto")
    if args.batch_size < 1 or args.batches < 1:
        raise UserError("--batch-size and --batches must be at least 1")
    own_tmp = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="alexnet-bench-")) if own_tmp else Path(args.work_dir)
    try:
        workers_guess = args.workers if args.workers is not None else max(1, min(16, (os.cpu_count() or 2) - 1))
        if args.data:
            ds = PreparedDataset(args.data, "train")
            source = str(args.data)
        else:
            photos = work / "photos"
            n = args.make_photos or ((args.warmup or 2 * max(workers_guess, 1) + 1) + args.batches + 1) * args.batch_size
            if not (photos / "meta.json").exists():
                make_photo_dataset(photos, n, seed=args.seed)
            ds = PreparedDataset(photos, "train")
            source = f"--make-photos {n} (scikit-image photos, random crops, 256×256 q90)"
        if ds.encoding != "jpeg":
            raise UserError(f"{args.data}: stores raw records; bench data measures JPEG datasets")
        workers = default_workers(ds) if args.workers is None else args.workers
        # Drain the prefetch queues before timing: ours holds workers × 2 batches, the DataLoader
        # workers × prefetch_factor(2); one more for the pipeline to reach its steady state.
        warmup = args.warmup if args.warmup is not None else 2 * max(workers, 1) + 1
        folder = work / "imagefolder"
        if not folder.exists():
            write_image_folder(ds, folder)
        row: dict[str, Any] = {"workers": workers, "batch_size": args.batch_size, "device": str(device),
                               "batches": args.batches, "warmup_batches": warmup, "dataset": source,
                               "num_images": len(ds), "images": f"prepared {ds.image_size[0]}×{ds.image_size[1]} JPEG",
                               "mean_jpeg_kb": round(float(ds.index[:, 1].mean()) / 1024, 1)}
        if len(ds) < (warmup + args.batches) * args.batch_size:
            row["note_epochs"] = "fewer images than warmup+batches need: timing spans epochs (loader restarts included)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's decode deprecation notice
            ours, info = bench_ours(ds, device, workers, args.batch_size, warmup, args.batches, decode=args.decode)
            row.update(info)
            row["ours_img_s"] = round(ours, 1)
            if args.uint8:
                u8, _ = bench_ours(ds, device, workers, args.batch_size, warmup, args.batches, decode=args.decode,
                                   augment=False)
                row["ours_uint8_img_s"] = round(u8, 1)
            ref = bench_reference(folder, device, workers, args.batch_size, warmup, args.batches)
        row["reference_img_s"] = round(ref, 1)
        row["ratio"] = round(ours / ref, 2)
        if args.prepare_images > 0:
            rate, how = bench_prepare(args.prepare_images, args.seed)
            row["prepare_img_s_per_core"] = round(rate, 1)
            row["prepare_method"] = how
        return row
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# bench model


def run_model(args: argparse.Namespace) -> dict[str, Any]:
    """The training step of ``alexnet train`` (FastStep: the same update, augmentation, autocast,
    layout and compilation) on a random uint8 batch on the device."""
    import torch

    from alexnet import models
    from alexnet.engine.device import pick_device
    from alexnet.perf.steps import make_step, optimizer_label, random_batch, random_stats
    from alexnet.perf.timing import time_calls

    models.check_name(args.model)
    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps must be at least 1 and --warmup at least 0")
    device = pick_device(args.device or "auto")
    mi = models.info(args.model)
    # The prepared images are 256×256 for the 224 input (§2); 4 pixels of padding for the small nets.
    stored = 256 if mi.input_size == 224 else mi.input_size + 4
    u8, labels, idx = random_batch(args.batch_size, stored, args.num_classes, device)
    torch.manual_seed(0)
    step = make_step(models.create(args.model, args.num_classes), device, stats=random_stats(u8),
                     input_size=mi.input_size, input_norm=mi.input_norm, amp=args.amp, channels_last=args.channels_last,
                     compile=args.compile, fused_optimizer=device.type == "cuda", lr=0.01)
    epoch = [0]

    def one() -> None:
        epoch[0] += 1  # new crops, flips and colour noise every step
        step(u8, labels, idx, epoch[0])

    s = time_calls(one, device, iters=args.steps, repeats=1, warmup=args.warmup)[0]
    return {"model": args.model, "device": str(device), "batch_size": args.batch_size, "amp": args.amp,
            "channels_last": args.channels_last, "compile": args.compile, "steps": args.steps,
            "step": "FastStep (alexnet train's step: augmentation on the device, forward, loss, backward, update)",
            "optimizer": optimizer_label(step), "img_per_s": round(args.batch_size / s, 1)}


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET")
    sub.required = True
    d = sub.add_parser("data", help="loader throughput against torchvision's reference recipe",
                       description="Loader throughput (decode + augmentation on the device) against torchvision's "
                                   "reference recipe on the same JPEGs, and prepare throughput per core.")
    src = d.add_mutually_exclusive_group()
    src.add_argument("--data", help="a prepared JPEG dataset (its train split is read)")
    src.add_argument("--make-photos", type=at_least(1), default=None, metavar="N",
                     help="build N real-photo 256×256 JPEGs from scikit-image's photos (the default; N: enough for "
                          "one epoch to cover warmup + timed batches)")
    d.add_argument("--work-dir", help="where to build the photo set and the image folder (default: a temp dir, removed)")
    d.add_argument("--workers", type=at_least(0), default=None, help="worker processes for both loaders (default: automatic)")
    d.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    d.add_argument("--decode", choices=["cpu", "cuda", "auto"], default="cpu", help="where our loader decodes JPEGs")
    d.add_argument("--batch-size", type=at_least(1), default=256)
    d.add_argument("--batches", type=at_least(1), default=8, help="timed batches per loader")
    d.add_argument("--warmup", type=at_least(0), default=None, help="untimed batches first (default: 2×workers+1)")
    d.add_argument("--no-uint8", dest="uint8", action="store_false",
                   help="skip the run of our loader alone (uint8 batches, no augmentation)")
    d.add_argument("--prepare-images", type=at_least(0), default=64, metavar="N",
                   help="ImageNet-sized JPEGs to time prepare on (0: skip)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true", help="print one JSON object")

    m = sub.add_parser("model", help="training-step throughput of a model on random data",
                       description="Throughput (img/s) of the training step alexnet train runs (FastStep) on a random "
                                   "uint8 batch already on the device.")
    m.add_argument("--model", default="alexnet")
    m.add_argument("--device", default=None)
    m.add_argument("--batch-size", type=at_least(1), default=256)
    m.add_argument("--num-classes", type=at_least(1), default=1000)
    m.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    m.add_argument("--channels-last", action="store_true")
    m.add_argument("--compile", action="store_true")
    m.add_argument("--steps", type=at_least(1), default=20)
    m.add_argument("--warmup", type=at_least(0), default=3)
    m.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.target == "data":
        row = run_data(args)
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['images']} ({row['dataset']}), batch {row['batch_size']}, {row['workers']} workers, "
                  f"device {row['device']}")
            print(f"  ours (decode + augmentation):   {row['ours_img_s']:10.1f} img/s")
            if "ours_uint8_img_s" in row:
                print(f"  ours, uint8 batches only:       {row['ours_uint8_img_s']:10.1f} img/s")
            print(f"  torchvision reference recipe:   {row['reference_img_s']:10.1f} img/s   (ours: {row['ratio']}×)")
            if "prepare_img_s_per_core" in row:
                print(f"  prepare, ImageNet-sized JPEGs:  {row['prepare_img_s_per_core']:10.1f} img/s per core")
        return 0
    row = run_model(args)
    print(json.dumps(row) if args.json else
          f"{row['model']} on {row['device']}, batch {row['batch_size']}, amp {row['amp']}: {row['img_per_s']:.1f} img/s")
    return 0

