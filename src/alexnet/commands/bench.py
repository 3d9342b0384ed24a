"""``alexnet bench data|model``: throughput measurements.

``bench data`` (issue 3 §6): images per second *as training consumes them* — JPEG decode by the
loader plus the paper's augmentation (§4.1: random 224 crop, flip, PCA colour noise, mean
subtraction) on the training device — for our loader, and for torchvision's reference recipe
(ImageFolder + PIL RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize in a
DataLoader with the same worker count) reading *the same* prepared 256×256 JPEGs written out as an
image folder. Both are timed only after their prefetch queues have been drained (a DataLoader
prefetches workers × prefetch_factor batches while idle: timing those measures nothing). It also
times ``prepare`` per core on ImageNet-sized (~500×375) JPEGs.

``bench model``: training-step throughput of one model on random data already on the device.

Photos: ``--make-photos N`` builds on the spot a prepared dataset of N real-photo 256×256 JPEGs
(q90) from scikit-image's bundled photographs (random square crops, rescaled, flipped), since
``synthetic`` is not a JPEG dataset and real photos decode at real speed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from alexnet.errors import UserError

# scikit-image's bundled colour photographs (no download needed).
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
           "stereo_motorcycle")


# ---------------------------------------------------------------------------------------------
# Real photos


def _source_photos() -> list[np.ndarray]:
    try:
        import skimage.data as skd
    except ImportError:
        raise UserError("--make-photos needs scikit-image (pip install scikit-image)") from None
    out = []
    for name in _PHOTOS:
        img = getattr(skd, name)()
        for im in img[:2] if isinstance(img, tuple) else (img,):  # stereo_motorcycle: a left/right pair
            if im.ndim == 3 and im.shape[2] == 3:
                out.append(np.ascontiguousarray(im))
    return out


def photo_crops(n: int, size: tuple[int, int], seed: int = 0) -> Iterator[np.ndarray]:
    """``n`` uint8 H×W×3 crops of real photos: a random region of the target aspect ratio
    covering 30–100% of the photo's short side, resized (antialiased) and flipped at random."""
    from PIL import Image

    srcs = _source_photos()
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


def _jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(img).save(b, "JPEG", quality=quality)
    return b.getvalue()


def make_photo_dataset(out: str | os.PathLike[str], n: int, *, size: int = 256, n_val: int = 0, classes: int = 10,
                       quality: int = 90, seed: int = 0) -> Path:
    """A prepared dataset (JPEG records) of ``n`` training and ``n_val`` validation real-photo
    crops of ``size``×``size``; labels are ``i % classes`` (these are for timing, not learning)."""
    from alexnet.data.format import DatasetWriter, StatsAccumulator

    if n < 1:
        raise UserError(f"--make-photos {n}: need at least one image")
    names = [f"class{c}" for c in range(classes)]
    with DatasetWriter(Path(out), names, source={"kind": "bench-photos", "photos": list(_PHOTOS), "seed": seed}) as dw:
        for split, count, s in (("train", n, seed), ("val", n_val, seed + 1)):
            if split == "val" and count == 0:
                continue
            sw = dw.split(split, "jpeg", (size, size))
            acc = StatsAccumulator((size, size))
            for i, img in enumerate(photo_crops(count, (size, size), s)):
                if split == "train":
                    acc.add(img)
                sw.add(_jpeg(img, quality), i % classes)
            dw.close_split(split)
            if split == "train":
                dw.write_stats(*acc.finish())
        return dw.commit()


def write_image_folder(ds: Any, out: Path) -> Path:
    """The prepared JPEG records, byte for byte, as an ImageFolder tree ``out/<class>/<i>.jpg``."""
    if ds.encoding != "jpeg":
        raise UserError(f"{ds.root}: the reference recipe reads JPEG files; this dataset stores raw records")
    classes = ds.classes
    for c in sorted(set(ds.labels.tolist())):
        (out / classes[c]).mkdir(parents=True, exist_ok=True)
    for i in range(len(ds)):
        (out / classes[int(ds.labels[i])] / f"{i:07d}.jpg").write_bytes(ds.record(i).tobytes())
    return out


# ---------------------------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(batches: Iterator[tuple[torch.Tensor, int]], warmup: int, timed: int, device: torch.device) -> float:
    """Images per second over ``timed`` batches after ``warmup`` untimed ones (which drain the
    prefetch queue filled while the consumer was not yet asking)."""
    n = 0
    t0 = 0.0
    for i, (x, bs) in enumerate(batches):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        if i >= warmup:
            n += bs
        if i + 1 == warmup + timed:
            break
        del x
    _sync(device)
    if n == 0:
        raise UserError("no batches were timed; lower --batch-size or --warmup, or give more images")
    return n / (time.perf_counter() - t0)


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


def bench_ours(ds: Any, device: torch.device, workers: int, batch_size: int, warmup: int, timed: int, *,
               decode: str = "cpu", augment: bool = True) -> tuple[float, dict[str, Any]]:
    """Our loader + the paper's training augmentation on ``device`` (uint8 only without ``augment``)."""
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
                x = aug.train(x, b.indices, epoch)  # N×3×224×224 float32, as train_step computes it
            yield x, len(b.indices)

    rate = _timed(_epochs(one_epoch), warmup, timed, device)
    info = {"decode": decode, "gpu_fraction": loader.gpu_fraction, "prefetch_batches": loader.workers * loader.prefetch}
    loader.close()
    return rate, info


def bench_reference(folder: Path, device: torch.device, workers: int, batch_size: int, warmup: int, timed: int) -> float:
    """torchvision's ImageNet training recipe on an image folder."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    ds = datasets.ImageFolder(str(folder), tf)

    def one_epoch(epoch: int) -> Iterator[tuple[torch.Tensor, int]]:
        dl = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(epoch))
        for x, y in dl:
            yield x.to(device, non_blocking=True), len(y)

    return _timed(_epochs(one_epoch), warmup, timed, device)


def bench_prepare(n: int, seed: int = 0) -> tuple[float, str]:
    """``prepare``'s per-core throughput on ImageNet-sized (500×375, q90) real-photo JPEGs: the
    prepare module's own measurement when it offers one, else Pillow decode + resize of the
    shorter side to 256 + central 256×256 crop + JPEG encode (§2), on one core."""
    srcs = [_jpeg(img) for img in photo_crops(n, (375, 500), seed + 7)]
    try:
        from alexnet.data.prepare import prepare_throughput  # prepare's own per-image work
    except ImportError:
        prepare_throughput = None
    if prepare_throughput is not None:
        with tempfile.TemporaryDirectory(prefix="alexnet-bench-prep-") as tmp:
            files = []
            for i, data in enumerate(srcs):
                files.append(Path(tmp) / f"{i:05d}.JPEG")
                files[-1].write_bytes(data)
            r = prepare_throughput(files, workers=1)
        return float(r["img_s_per_core"]), "alexnet.data.prepare.prepare_throughput (1 worker, real-photo 500×375 q90)"
    from PIL import Image

    def one(data: bytes) -> bytes:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.Resampling.BILINEAR)
        w, h = im.size
        left, top = (w - 256) // 2, (h - 256) // 2
        return _jpeg(np.asarray(im.crop((left, top, left + 256, top + 256))))

    for d in srcs[:2]:
        one(d)
    t0 = time.perf_counter()
    for d in srcs:
        one(d)
    return len(srcs) / (time.perf_counter() - t0), "pillow: decode, resize shorter side to 256, centre crop, encode q90"


# ---------------------------------------------------------------------------------------------
# Machine description (also used by benchmarks/*.py)


def machine_info() -> dict[str, Any]:
    import PIL
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "host": platform.node(), "cpu": cpu, "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "pillow": PIL.__version__, "numpy": np.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        root = Path(__file__).resolve().parents[3]
        info["git_sha"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                         timeout=10).stdout.strip() or None
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                                                text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["git_sha"] = None
    return info


def _device(spec: str | None) -> torch.device:
    from alexnet.engine.train import pick_device  # the one device parser

    return pick_device(spec or "auto")


# ---------------------------------------------------------------------------------------------
# bench data


def run_data(args: argparse.Namespace) -> dict[str, Any]:
    from alexnet.data.format import PreparedDataset
    from alexnet.data.loader import default_workers

    device = _device(args.device)
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
    from torch.nn import functional as F

    from alexnet import models

    if args.model not in models.names():
        raise UserError(f"--model {args.model}: unknown; accepted: {', '.join(models.names())}")
    device = _device(args.device)
    size = models.info(args.model).input_size
    model = models.create(args.model, args.num_classes).to(device)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.batch_size, 3, size, size, generator=g).to(device).contiguous(memory_format=mf)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(step_model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    rate = args.steps * args.batch_size / (time.perf_counter() - t0)
    return {"model": args.model, "device": str(device), "batch_size": args.batch_size, "amp": args.amp,
            "channels_last": args.channels_last, "compile": args.compile, "steps": args.steps,
            "img_per_s": round(rate, 1)}


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
    src.add_argument("--make-photos", type=int, default=None, metavar="N",
                     help="build N real-photo 256×256 JPEGs from scikit-image's photos (the default; N: enough for "
                          "one epoch to cover warmup + timed batches)")
    d.add_argument("--work-dir", help="where to build the photo set and the image folder (default: a temp dir, removed)")
    d.add_argument("--workers", type=int, default=None, help="worker processes for both loaders (default: automatic)")
    d.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    d.add_argument("--decode", choices=["cpu", "cuda", "auto"], default="cpu", help="where our loader decodes JPEGs")
    d.add_argument("--batch-size", type=int, default=256)
    d.add_argument("--batches", type=int, default=8, help="timed batches per loader")
    d.add_argument("--warmup", type=int, default=None, help="untimed batches first (default: 2×workers+1)")
    d.add_argument("--no-uint8", dest="uint8", action="store_false",
                   help="skip the run of our loader alone (uint8 batches, no augmentation)")
    d.add_argument("--prepare-images", type=int, default=64, metavar="N",
                   help="ImageNet-sized JPEGs to time prepare on (0: skip)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true", help="print one JSON object")

    m = sub.add_parser("model", help="training-step throughput of a model on random data",
                       description="Training-step throughput (img/s) of a model on random data already on the device.")
    m.add_argument("--model", default="alexnet")
    m.add_argument("--device", default=None)
    m.add_argument("--batch-size", type=int, default=256)
    m.add_argument("--num-classes", type=int, default=1000)
    m.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    m.add_argument("--channels-last", action="store_true")
    m.add_argument("--compile", action="store_true")
    m.add_argument("--steps", type=int, default=20)
    m.add_argument("--warmup", type=int, default=3)
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

