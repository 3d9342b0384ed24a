"""``alexnet bench data|model``: throughput measurements (parsing and printing; the measurements are
:mod:`alexnet.perf`'s).

``bench data``: images per second *as training consumes them* — JPEG decode by the
loader plus the paper's augmentation (§4.1) on the training device — for our loader and for
torchvision's reference recipe on the same JPEGs, and ``prepare`` per core on ImageNet-sized JPEGs
(:func:`alexnet.perf.loader.loader_vs_reference`).

``bench model``: throughput of the training step ``alexnet train`` runs (:class:`alexnet.engine.fast_step.FastStep`:
augmentation on the device, forward, loss, backward, update) on a random uint8 batch already on the
device (:func:`alexnet.perf.steps.step_throughput`).

Photos: ``--make-photos N`` builds on the spot a prepared dataset of N real-photo 256×256 JPEGs
(q90, :mod:`alexnet.perf.fixtures`), since ``synthetic`` is not a JPEG dataset and real photos decode
at real speed.
"""

from __future__ import annotations

import argparse
import json

from alexnet.commands.common import at_least


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
    # Imported here: the parser (alexnet --help) loads no torch.
    if args.target == "data":
        from alexnet.perf.loader import loader_vs_reference

        row = loader_vs_reference(data=args.data, make_photos=args.make_photos, work_dir=args.work_dir,
                                  workers=args.workers, device=args.device, decode=args.decode,
                                  batch_size=args.batch_size, batches=args.batches, warmup=args.warmup,
                                  uint8=args.uint8, prepare_images=args.prepare_images, seed=args.seed)
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
    from alexnet.engine.device import pick_device
    from alexnet.perf.steps import step_throughput

    row = step_throughput(args.model, pick_device(args.device or "auto"), batch_size=args.batch_size,
                          num_classes=args.num_classes, amp=args.amp, channels_last=args.channels_last,
                          compile=args.compile, steps=args.steps, warmup=args.warmup)
    print(json.dumps(row) if args.json else
          f"{row['model']} on {row['device']}, batch {row['batch_size']}, amp {row['amp']}: {row['img_per_s']:.1f} img/s")
    return 0

