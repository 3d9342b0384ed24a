"""Training throughput of the paper's network on one GPU: model only, end to end, MFU, hours for 90 epochs.

    PYTHONPATH=src python3 benchmarks/gpu.py                       # one H100: finishes within ~7 minutes
    PYTHONPATH=src python3 benchmarks/gpu.py --device cpu --tiny   # toy scale on the CPU: tests the code path
    python3 benchmarks/gpu.py --markdown benchmarks/results/gpu-….json  # the README's tables

What it measures, in one run (issue 6):

* **model-only**: a random uint8 batch already on the device → our augmentation (§4.1 on the device,
  alexnet.data.augment) → model → loss → backward → optimizer step, batch 256, bf16 autocast +
  channels_last, through :class:`alexnet.engine.fast_step.FastStep`, eager and ``torch.compile``d, for
  ``alexnet`` (paper net, fused Triton LRN), ``alexnet`` with ``lrn="none"`` (so LRN's share of the step
  is 1 - t(none)/t(paper); target ≤ 15%) and ``alexnet-owt``, each with the paper's update rule
  (PaperSGD, fused when compiled), beside ``torchvision.models.alexnet`` with ``torch.optim.SGD`` (eager
  and compiled), plus torchvision's net on random float input without augmentation, the setting of
  ../shared/ANCHORS.md's table (a check that this machine matches the anchors' one). Warm-up (and
  compilation) steps are excluded; timing is bracketed by ``torch.cuda.synchronize``; the median of
  three rounds is kept.
* **end-to-end**: a prepared dataset of real-photo 256×256 JPEGs (q90) built on the spot from
  scikit-image's bundled photographs (random crops, rescales and flips: every image distinct; when
  scikit-image is missing, photo-like images from our synthetic source, rows marked ``"photos":
  false``), read by :class:`alexnet.data.loader.BatchLoader` with N worker processes, augmented on
  the GPU and trained by the fastest step measured above, for ``alexnet`` and ``alexnet-owt``, with
  the loader's CPU decoding and with its CPU+GPU ("auto") decoding; then torchvision's reference
  recipe on the same machine: ImageFolder over the same JPEGs as files, PIL RandomResizedCrop(224) +
  flip + ToTensor + Normalize in a DataLoader with the same workers, torchvision's AlexNet step in bf16
  + channels_last; and the same recipe on ImageNet-sized JPEGs (~500×375), what users run it on.
  Timing trap (ANCHORS.md): a loader prefetches ``workers × prefetch`` batches while its consumer is
  busy elsewhere; every epoch here skips its first ``workers × prefetch + 1`` batches before the
  clock starts, so ``img_per_s`` is the steady state inside an epoch (an ImageNet epoch is 5,005
  batches); ``img_per_s_with_restarts`` also counts the epoch boundaries of this small dataset.
* **loader-only**: the same loader delivering uint8 batches to the device, no step (is the loader
  the bottleneck?).
* **MFU** from FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode`` on one forward +
  backward of each model (matmuls and convolutions, the usual convention), against the card's dense
  bf16 peak (H100 SXM: 989 TFLOP/s) and against ANCHORS.md's measured bf16 matmul ceiling on the H100
  machine (806 TFLOP/s); projected hours for 90 epochs of ImageNet (115.3M images).

Runs are ordered by importance and a deadline (``--deadline``, default 420 s on CUDA) skips what no
longer fits (a "skipped" row says so); compilation time is estimated from the first compile.
Rows go to ``--out``/gpu-<device>-<date>.json after every measurement (a killed run keeps what it
measured); each row holds device, model, mode, img_per_s, recipe, batch, workers, versions (torch,
torchvision, triton, CUDA, cuDNN, driver), date, git SHA and host CPU count.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the deadline counts from here: imports of torch & co. included

import argparse
import datetime as dt
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent

# 90 epochs of ImageNet-1k's training set (1,281,167 images): 115.3M images.
IMAGES_90_EPOCHS = 90 * 1_281_167
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched against the
# device name, most specific first.
SPEC_PEAK_BF16 = (("h100 pcie", 756.0), ("h100 nvl", 835.0), ("h100", 989.0), ("gh200", 989.0), ("h200", 989.0),
                  ("a100", 312.0))
# ../shared/ANCHORS.md: a large bf16 matmul on the H100 machine reached 806 TFLOP/s (the practical ceiling).
MEASURED_PEAK_BF16 = (("h100 80gb hbm3", 806.0, "ANCHORS.md: bf16 matmul measured on the H100 (SXM, HBM3) machine"),)
REF_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation (the reference recipe)
REF_STD = (0.229, 0.224, 0.225)
MODES = ("model-only", "end-to-end")
# The learning rate of every timed step. Its value does not change the work; the paper's 0.01 makes
# these random-label runs diverge within a few steps, and the benchmark reports the loss it ends at.
LR = 1e-3


# ---------------------------------------------------------------------------------------------------
# Machine and versions


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    import PIL
    import torchvision

    versions: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                                "torchvision": torchvision.__version__, "numpy": np.__version__, "pillow": PIL.__version__}
    try:
        import triton

        versions["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - absent or broken: recorded as missing
        versions["triton"] = None
    try:
        import skimage

        versions["scikit-image"] = skimage.__version__
    except Exception:  # noqa: BLE001
        versions["scikit-image"] = None
    env: dict[str, Any] = {"device_type": device.type, "host_cpus": os.cpu_count(),
                           "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                           "cpu": cpu_model(), "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device"] = props.name
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_sms"] = props.multi_processor_count
        versions["cuda"] = torch.version.cuda
        versions["cudnn"] = torch.backends.cudnn.version()
        versions["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        if versions["driver"]:
            versions["driver"] = versions["driver"].splitlines()[0].strip()
    else:
        env["device"] = cpu_model()
        versions["cuda"] = versions["cudnn"] = versions["driver"] = None
    env["versions"] = versions
    env["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    env["git_sha"] = _run(["git", "rev-parse", "HEAD"], REPO)
    status = _run(["git", "status", "--porcelain"], REPO)
    env["git_dirty"] = None if status is None else bool(status)
    return env


def device_slug(env: dict[str, Any]) -> str:
    if env["device_type"] == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")[:48]


def peaks(device_name: str) -> tuple[float | None, float | None, str | None]:
    """(spec dense bf16 peak, measured practical ceiling, its source) in TFLOP/s for a device name."""
    name = device_name.lower()
    spec = next((p for key, p in SPEC_PEAK_BF16 if key in name), None)
    meas = next(((p, src) for key, p, src in MEASURED_PEAK_BF16 if key in name), (None, None))
    return spec, meas[0], meas[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------
# Photo datasets, built on the spot (worker processes, before CUDA is initialised)


def photos_available() -> bool:
    try:
        from alexnet.commands.bench import _source_photos

        return len(_source_photos()) > 0
    except Exception:  # noqa: BLE001 - no scikit-image, or its data missing: use the fallback
        return False


def _chunk_images(kind: str, n: int, size: tuple[int, int], seed: int, start: int) -> Iterator[np.ndarray]:
    if kind == "photos":
        from alexnet.commands.bench import photo_crops

        yield from photo_crops(n, size, seed)
    else:  # photo-like synthetic scenes (gradients, lighting, noise), square
        from alexnet.data.sources import synthetic
        from PIL import Image

        imgs, _ = synthetic.generate(n, max(size), seed, start=start)
        for im in imgs:
            if im.shape[:2] != size:
                im = np.asarray(Image.fromarray(im).resize((size[1], size[0]), Image.Resampling.BILINEAR))
            yield im


def _make_chunk(task: tuple[str, int, tuple[int, int], int, int, int, bool]) -> tuple[list[bytes], dict | None]:
    """JPEG bytes of one chunk of images (and, for a training set, the chunk's statistics sums)."""
    from alexnet.commands.bench import _jpeg
    from alexnet.data.format import StatsAccumulator

    kind, n, size, seed, start, quality, stats = task
    acc = StatsAccumulator(size, seed=seed) if stats else None
    out = []
    for img in _chunk_images(kind, n, size, seed, start):
        if acc is not None:
            acc.add(img)
        out.append(_jpeg(img, quality))
    return out, (acc.state() if acc is not None else None)


def _chunks(n: int, procs: int, seed: int, kind: str, size: tuple[int, int], quality: int, stats: bool) -> list[tuple]:
    per = max(1, math.ceil(n / max(1, 4 * procs)))  # 4 chunks per process: balanced
    return [(kind, min(per, n - s), size, seed * 1_000_003 + s, s, quality, stats) for s in range(0, n, per)]


def build_jpegs(n: int, size: tuple[int, int], procs: int, seed: int, kind: str, stats: bool) -> Iterator[tuple[list[bytes], dict | None]]:
    tasks = _chunks(n, procs, seed, kind, size, 90, stats)
    if procs <= 1:
        yield from map(_make_chunk, tasks)
        return
    # fork: the children only run numpy/Pillow (no CUDA), and inherit the imported modules.
    with mp.get_context("fork").Pool(procs) as pool:
        yield from pool.imap(_make_chunk, tasks)


def build_prepared(out: Path, n: int, procs: int, seed: int, kind: str) -> Path:
    """A prepared dataset (alexnet.data.format) of ``n`` 256×256 JPEG training records."""
    from alexnet.data.format import DatasetWriter, StatsAccumulator

    classes = [f"class{c}" for c in range(10)]
    with DatasetWriter(out, classes, source={"kind": "benchmarks/gpu.py", "images": kind, "seed": seed}) as dw:
        sw = dw.split("train", "jpeg", (256, 256))
        acc = StatsAccumulator((256, 256))
        i = 0
        for records, st in build_jpegs(n, (256, 256), procs, seed, kind, stats=True):
            for rec in records:
                sw.add(rec, i % len(classes))  # labels: for timing, not learning
                i += 1
            assert st is not None
            acc.add_sums(st["sum"], int(st["n"]), st["rgb_sum"], st["rgb_outer"], int(st["rgb_n"]))
        dw.close_split("train")
        dw.write_stats(*acc.finish())
        return dw.commit()


def build_folder(out: Path, n: int, size: tuple[int, int], procs: int, seed: int, kind: str) -> Path:
    """An ImageFolder tree ``out/class<c>/<i>.jpg`` of ``n`` JPEGs of ``size`` (H, W)."""
    for c in range(10):
        (out / f"class{c}").mkdir(parents=True, exist_ok=True)
    i = 0
    for records, _ in build_jpegs(n, size, procs, seed, kind, stats=False):
        for rec in records:
            (out / f"class{i % 10}" / f"{i:07d}.jpg").write_bytes(rec)
            i += 1
    return out


# ---------------------------------------------------------------------------------------------------
# Models, steps, FLOPs


@dataclass
class Variant:
    key: str  # unique name of the model build
    model: str  # "alexnet", "alexnet-owt", "torchvision alexnet"
    variant: str  # "" or what differs from the model's default
    build: Callable[[], nn.Module]
    ours: bool  # our model + PaperSGD + our registry's input norm; else torchvision + torch SGD
    input_norm: str


def variants() -> dict[str, Variant]:
    from alexnet import models
    from alexnet.engine.fast_step import two_tower_convs

    def tv() -> nn.Module:
        import torchvision

        return torchvision.models.alexnet(weights=None)

    paper_norm, owt_norm = models.info("alexnet").input_norm, models.info("alexnet-owt").input_norm
    vs = [
        Variant("alexnet", "alexnet", "", lambda: models.create("alexnet"), True, paper_norm),
        Variant("alexnet-nolrn", "alexnet", "lrn=none", lambda: models.create("alexnet", lrn="none"), True, paper_norm),
        Variant("alexnet-towers", "alexnet", "towers as two convs", lambda: two_tower_convs(models.create("alexnet")),
                True, paper_norm),
        Variant("alexnet-owt", "alexnet-owt", "", lambda: models.create("alexnet-owt"), True, owt_norm),
        Variant("torchvision", "torchvision alexnet", "", tv, False, "mean_std"),
    ]
    return {v.key: v for v in vs}


def lrn_impl(v: Variant, device: torch.device, lrn_mode: str | None) -> str | None:
    from alexnet.models import lrn_fast

    if not v.ours or v.key == "alexnet-nolrn" or v.model == "alexnet-owt":
        return None
    mode = lrn_mode or lrn_fast.mode()
    if mode == "triton" or (mode == "auto" and lrn_fast.HAVE_TRITON and device.type == "cuda"):
        return "triton"
    return "plain"


def grouped_conv_backward_flop(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias: Any,
                               _stride: Any, _padding: Any, _dilation: Any, transposed: bool, _output_padding: Any,
                               groups: int, output_mask: list[bool], out_shape: Any = None, **kwargs: Any) -> int:
    """``aten.convolution_backward``'s FLOPs with groups counted in the weight gradient too.

    torch's own formula (torch.utils.flop_counter.conv_backward_flop, torch 2.11–2.14) counts the
    weight gradient of a grouped convolution as if it were ungrouped, ``groups`` times too many: for
    the paper's two-tower conv2, conv4 and conv5 (§3.2, groups=2) that inflates the paper net's count
    by 0.82 GFLOP per image (4.96 instead of 4.14). Each group's weight gradient only correlates its
    own C_in/groups input channels with its own C_out/groups output gradients."""
    from torch.utils.flop_counter import conv_flop_count

    def t(shape: Any) -> list[int]:
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:  # grad_input: a transposed convolution with the (already per-group) weight
        flops += conv_flop_count(list(grad_out_shape), list(w_shape), list(out_shape[0]), not transposed)
    if output_mask[1]:  # grad_weight: input ⋆ grad_out, one correlation per group
        gw = list(out_shape[1])
        if transposed:
            flops += conv_flop_count(t(grad_out_shape), t(x_shape), t(gw), transposed=False) // groups
        else:
            flops += conv_flop_count(t(x_shape), t(grad_out_shape), t(gw), transposed=False) // groups
    return flops


def flops_per_image(build: Callable[[], nn.Module], size: int = 224, batch: int = 2, fix_groups: bool = True) -> float:
    """FLOPs of one forward + backward per image, counted by FlopCounterMode on the meta device (no
    data, no time): convolutions and matmuls, including conv1's weight gradient but not its input
    gradient (the input needs none), as in training. ``fix_groups``: count grouped convolutions'
    weight gradients correctly (:func:`grouped_conv_backward_flop`)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build()
        x = torch.randn(batch, 3, size, size)
        y = torch.randint(0, 1000, (batch,))
    model.train()
    mapping = {torch.ops.aten.convolution_backward: grouped_conv_backward_flop} if fix_groups else {}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def random_stats(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Augmentation statistics (§2 mean image, §4.1 RGB PCA) of a random uint8 batch."""
    x = images.float()
    mean = x.mean(0).cpu()  # 3×H×W, 0–255
    px = (x / 255.0).permute(1, 0, 2, 3).reshape(3, -1).double()  # 3×(N·H·W)
    eigval, eigvec = torch.linalg.eigh(torch.cov(px).cpu())
    return {"mean": mean, "eigval": eigval.flip(0).float(), "eigvec": eigvec.flip(1).float()}


# ---------------------------------------------------------------------------------------------------
# Timing


def time_steps(step: Callable[[], object], device: torch.device, budget_s: float, warmup: int, rounds: int = 3,
               min_steps: int = 2) -> dict[str, Any]:
    """Median over ``rounds`` of the mean time per step, each round about ``budget_s / rounds``."""
    for _ in range(warmup):
        step()
    sync(device)
    t = time.perf_counter()
    step()
    sync(device)
    one = time.perf_counter() - t
    n = max(min_steps, int(budget_s / rounds / max(one, 1e-6)))
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync(device)
        samples.append((time.perf_counter() - t0) / n)
    return {"s_per_step": statistics.median(samples), "steps_per_round": n, "rounds": rounds,
            "samples_ms": [round(s * 1e3, 3) for s in samples]}


@dataclass
class Runner:
    args: argparse.Namespace
    device: torch.device
    env: dict[str, Any]
    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    # The fastest step of each model end-to-end trains with (alexnet, alexnet-owt; torchvision's eager
    # one for the reference recipe): variant key -> (FastStep, step kind). Others are freed at once.
    steps: dict[str, tuple[Any, str]] = field(default_factory=dict)
    rates: dict[tuple[str, str], float] = field(default_factory=dict)  # model-only img/s per (key, step kind)
    flops: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)
    compile_s: list[float] = field(default_factory=list)
    flops_torch_raw: dict[str, float] = field(default_factory=dict)  # FlopCounterMode's own (grouped-conv bug)

    # -- bookkeeping ---------------------------------------------------------------------------------

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def compile_estimate(self) -> float:
        return 1.3 * max(self.compile_s) if self.compile_s else self.args.compile_estimate

    def fits(self, cost_s: float) -> bool:
        return self.args.deadline <= 0 or self.elapsed() + cost_s <= self.args.deadline

    def common(self) -> dict[str, Any]:
        e = self.env
        return {"device": e["device"], "device_type": e["device_type"], "host_cpus": e["host_cpus"],
                "versions": e["versions"], "date": e["date"], "git_sha": e["git_sha"], "git_dirty": e["git_dirty"]}

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {**self.common(), **row}
        self.rows.append(row)
        self.save()
        return row

    def save(self) -> None:
        result = {**self.env, "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
                  "flops_per_image": self.flops, "flops_per_image_torch_formula": self.flops_torch_raw,
                  "wall_s": round(self.elapsed(), 1), "rows": self.rows}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, self.path)

    def skip(self, what: dict[str, Any], reason: str) -> None:
        print(f"skip  {what.get('mode', '')} {what.get('model', '')} {what.get('variant', '')} "
              f"{what.get('step', what.get('loader', ''))}: {reason}", flush=True)
        self.add({**what, "img_per_s": None, "skipped": reason})

    def derive(self, row: dict[str, Any], key: str | None) -> None:
        """TFLOP/s, MFU and hours for 90 epochs from img/s."""
        rate = row.get("img_per_s")
        if not rate:
            return
        row["hours_90_epochs"] = round(IMAGES_90_EPOCHS / rate / 3600, 2)
        fl = self.flops.get(key) if key else None
        if fl:
            spec, meas, src = peaks(self.env["device"]) if self.cuda else (None, None, None)
            tf = rate * fl / 1e12
            row["gflop_per_img"] = round(fl / 1e9, 3)
            row["tflop_per_s"] = round(tf, 1)
            row["peak_tflops_spec"] = spec
            row["mfu_spec"] = round(tf / spec, 4) if spec else None
            row["peak_tflops_measured"] = meas
            row["peak_measured_source"] = src
            row["mfu_measured_peak"] = round(tf / meas, 4) if meas else None

    # -- steps ---------------------------------------------------------------------------------------

    def recipe(self, v: Variant, kind: str, augment: bool = True, lrn_mode: str | None = None) -> dict[str, Any]:
        a = self.args
        return {"amp": a.amp, "channels_last": a.channels_last, "compile": kind != "eager",
                "compile_backend": a.compile_backend if kind != "eager" else None, "cuda_graphs": kind == "compile+cudagraphs",
                "lr": LR, "optimizer": ("PaperSGD §5" + (" (fused, compiled)" if kind != "eager" else " (foreach)")) if v.ours
                else "torch.optim.SGD (foreach)",
                "augment": "§4.1 on the device (crop, flip, PCA noise, mean)" if augment else "none (random float input)",
                "input_norm": v.input_norm if augment else None, "lrn": lrn_impl(v, self.device, lrn_mode),
                "cudnn_benchmark": torch.backends.cudnn.benchmark if self.cuda else None}

    def make_step(self, v: Variant, kind: str, stats: dict[str, torch.Tensor] | None) -> Any:
        """A warmed-up FastStep for ``v`` ("eager", "compile", "compile+cudagraphs")."""
        from alexnet.data.augment import Augment
        from alexnet.engine.fast_step import FastStep
        from alexnet.engine.optim import PaperSGD

        torch.manual_seed(0)
        model = v.build().to(self.device)
        if self.args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        if v.ours:
            opt: torch.optim.Optimizer = PaperSGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
        else:  # torchvision's reference recipe for AlexNet: momentum 0.9, weight decay 1e-4
            opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        aug = None
        if stats is not None:
            aug = Augment.from_stats(stats, 224, input_norm=v.input_norm, seed=0)
        return FastStep(model, opt, aug, self.device, amp=self.args.amp, channels_last=self.args.channels_last,
                        compile=kind != "eager", cuda_graphs=kind == "compile+cudagraphs",
                        compile_backend=self.args.compile_backend)

    def model_only(self, key: str, kind: str, *, augment: bool = True, lrn_mode: str | None = None) -> None:
        v = variants()[key]
        variant = v.variant + ("" if augment else ("; " if v.variant else "") + "no augmentation (ANCHORS' setting)")
        if lrn_mode:
            variant = (variant + "; " if variant else "") + f"ALEXNET_LRN={lrn_mode}"
        what = {"mode": "model-only", "model": v.model, "variant": variant, "step": kind, "batch": self.args.batch}
        cost = self.args.time_budget + 10 + (self.compile_estimate() if kind != "eager" else 0)
        if not self.fits(cost):
            self.skip(what, f"deadline: {self.elapsed():.0f}s elapsed + ~{cost:.0f}s > {self.args.deadline:.0f}s")
            return
        from alexnet.models import lrn_fast

        b = self.args.batch
        gen = torch.Generator(device="cpu").manual_seed(0)
        u8 = torch.randint(0, 256, (b, 3, 256, 256), generator=gen, dtype=torch.uint8).to(self.device)
        labels = torch.randint(0, 1000, (b,), generator=gen).to(self.device)
        indices = torch.arange(b)  # CPU, as the loader delivers them
        xf = None
        if not augment:
            fmt = torch.channels_last if self.args.channels_last else torch.contiguous_format
            xf = torch.randn(b, 3, 224, 224, generator=gen).to(self.device).contiguous(memory_format=fmt)
        counter = [0]
        try:
            with lrn_fast.use_mode(lrn_mode or lrn_fast.mode()):
                step = self.make_step(v, kind, random_stats(u8) if augment else None)

                def one() -> object:
                    counter[0] += 1  # a new "epoch" per step: new crops, flips and colour noise every time
                    if xf is not None:
                        return step(xf, labels, indices, 0)
                    return step(u8, labels, indices, counter[0])

                t = time.perf_counter()
                loss, _ = one()  # the first step compiles (and runs cuDNN's autotuning)
                sync(self.device)
                first_s = time.perf_counter() - t
                if kind != "eager":
                    self.compile_s.append(first_s)
                timing = time_steps(one, self.device, self.args.time_budget, self.args.warmup, rounds=self.args.rounds,
                                    min_steps=1 if self.args.tiny else 2)
                final_loss = float(loss)
        except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others' rows
            self.add({**what, "img_per_s": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
            print(f"error {what}: {e}", flush=True)
            return
        rate = b / timing["s_per_step"]
        row: dict[str, Any] = {**what, "img_per_s": round(rate, 1), "ms_per_step": round(timing["s_per_step"] * 1e3, 3),
                               "first_step_s": round(first_s, 1), "workers": 0, "recipe": self.recipe(v, kind, augment, lrn_mode),
                               "timing": timing, "loss_first_step": round(final_loss, 4)}
        self.derive(row, key)
        if augment and not lrn_mode:
            self.rates[(key, kind)] = rate
            if key in ("alexnet", "alexnet-owt") or (key == "torchvision" and kind == "eager"):
                old = self.steps.get(key)
                if old is None or self.rates[(key, old[1])] < rate:
                    self.steps[key] = (step, kind)
        self.lrn_share(row, key, kind)
        self.add(row)
        share = f"  LRN share {row['lrn_share']:.1%}" if row.get("lrn_share") is not None else ""
        print(f"model-only  {v.model:20s} {variant[:28]:28s} {kind:18s} {rate:10.1f} img/s  "
              f"{timing['s_per_step'] * 1e3:8.2f} ms/step  first step {first_s:6.1f}s{share}", flush=True)
        del step
        self.free()  # also the step this one replaced as its model's fastest

    def lrn_share(self, row: dict[str, Any], key: str, kind: str) -> None:
        """1 - t(lrn=none)/t(paper) in the same step kind, on whichever of the pair is measured second."""
        pair = {"alexnet": "alexnet-nolrn", "alexnet-nolrn": "alexnet"}.get(key)
        if pair is None or (pair, kind) not in self.rates or row["variant"] not in ("", "lrn=none"):
            return
        share = round(1.0 - self.rates[("alexnet", kind)] / self.rates[("alexnet-nolrn", kind)], 4)  # t ∝ 1/rate
        row["lrn_share"] = share
        for r in self.rows:  # also on the paper net's row
            if r.get("mode") == "model-only" and r.get("model") == "alexnet" and r.get("variant") == "" and r.get("step") == kind:
                r["lrn_share"] = share
        self.save()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def best_step(self, key: str) -> tuple[Any, str] | None:
        return self.steps.get(key)

    # -- data ----------------------------------------------------------------------------------------

    def dataset(self) -> Any:
        """The prepared 256×256 JPEG dataset (built once, in worker processes) and its image folder."""
        if "prepared" not in self.data:
            from alexnet.commands.bench import write_image_folder
            from alexnet.data.format import PreparedDataset

            kind = "photos" if photos_available() else "synthetic"
            n = self.args.images if kind == "photos" else min(self.args.images, self.args.synthetic_images)
            work = self.args.work_dir
            t = time.perf_counter()
            root = build_prepared(work / "photos", n, self.args.build_procs, 0, kind)
            ds = PreparedDataset(root, "train")
            t_build = time.perf_counter() - t
            folder = write_image_folder(ds, work / "imagefolder")
            self.data.update(prepared=ds, folder=folder, kind=kind, build_s=round(time.perf_counter() - t, 1),
                             build_prepared_s=round(t_build, 1), n=len(ds),
                             mean_jpeg_kb=round(float(ds.index[:, 1].mean()) / 1024, 1))
            print(f"data  {len(ds)} {'real-photo' if kind == 'photos' else 'SYNTHETIC (no scikit-image)'} 256×256 "
                  f"JPEGs q90, {self.data['mean_jpeg_kb']} KB each, built in {self.data['build_s']} s", flush=True)
        return self.data["prepared"]

    def data_fields(self) -> dict[str, Any]:
        d = self.data
        return {"photos": d["kind"] == "photos", "images": d["n"], "image_size": "256×256 JPEG q90",
                "mean_jpeg_kb": d["mean_jpeg_kb"], "dataset_build_s": d["build_s"]}

    def loader(self, ds: Any, decode: str) -> Any:
        """Our BatchLoader, passing only the keyword arguments this version of it accepts."""
        import inspect

        from alexnet.data.loader import BatchLoader

        accepted = inspect.signature(BatchLoader.__init__).parameters
        kw: dict[str, Any] = {"shuffle": True, "seed": 0, "workers": self.args.workers, "pin_memory": self.cuda}
        if "decode" in accepted:
            kw["decode"] = decode
        elif decode != "cpu":
            raise RuntimeError("this BatchLoader has no decode option")
        if "device" in accepted and self.cuda:
            kw["device"] = self.device
        return BatchLoader(ds, self.args.batch, **kw)

    def run_epochs(self, make_iter: Callable[[int], Iterator[Any]], consume: Callable[[Any, int], int], skip: int,
                   budget_s: float, batches_per_epoch: int, max_epochs: int = 1000) -> dict[str, Any]:
        """Steady-state throughput inside epochs: each epoch's first ``skip`` batches are untimed
        (the pipeline fills; a queue filled while nobody consumed is drained), then the clock runs to
        the epoch's end or the budget. Also the rate over the whole run after the first skip,
        epoch restarts included."""
        if batches_per_epoch <= skip:
            raise RuntimeError(f"an epoch has {batches_per_epoch} batches, none left to time after skipping the first "
                               f"{skip} (workers × prefetch + 1): give more --images or fewer --workers")
        timed_imgs, timed_s = 0, 0.0
        wall_imgs, wall_t0 = 0, None
        epochs = 0
        deadline = None
        for epoch in range(max_epochs):
            it = make_iter(epoch)
            t_ep, n_ep, nb = None, 0, 0
            try:
                for i, batch in enumerate(it):
                    n = consume(batch, epoch)
                    nb += 1
                    if i == skip - 1:
                        sync(self.device)
                        t_ep = time.perf_counter()
                        if wall_t0 is None:
                            wall_t0, deadline = t_ep, t_ep + budget_s
                    elif i >= skip:
                        n_ep += n
                        if wall_t0 is not None:
                            wall_imgs += n
                        if deadline is not None and n_ep and time.perf_counter() > deadline:
                            break
            finally:
                # Shut the workers down now: our loader's generator, or a DataLoader's iterator.
                close = getattr(it, "close", None) or getattr(it, "_shutdown_workers", None)
                if close is not None:
                    close()
            sync(self.device)
            now = time.perf_counter()
            if t_ep is not None and n_ep:
                timed_imgs += n_ep
                timed_s += now - t_ep
            epochs += 1
            if deadline is not None and now > deadline:
                break
            if nb <= skip:
                raise RuntimeError(f"epochs of {nb} batches: none left to time after skipping {skip}; more --images")
        if not timed_imgs:
            raise RuntimeError("no batch was timed")
        steady = timed_imgs / timed_s
        wall_s = time.perf_counter() - wall_t0 if wall_t0 is not None else float("nan")
        restarts = max(0, epochs - 1)
        overhead = (wall_s - wall_imgs / steady) / restarts if restarts else None
        return {"img_per_s": round(steady, 1), "timed_images": timed_imgs, "timed_s": round(timed_s, 2),
                "epochs": epochs, "batches_per_epoch": batches_per_epoch,
                "skipped_batches_per_epoch": skip, "img_per_s_with_restarts": round(wall_imgs / wall_s, 1),
                "epoch_restart_s": round(overhead, 3) if overhead is not None else None}

    def end_to_end(self, key: str, decode: str) -> None:
        v = variants()[key]
        what = {"mode": "end-to-end", "model": v.model, "variant": v.variant, "loader": "alexnet BatchLoader",
                "decode": decode, "batch": self.args.batch, "workers": self.args.workers}
        cost = self.args.time_budget + 15 + (0 if "prepared" in self.data else self.args.build_estimate)
        if not self.fits(cost):
            self.skip(what, f"deadline: {self.elapsed():.0f}s elapsed + ~{cost:.0f}s > {self.args.deadline:.0f}s")
            return
        best = self.best_step(key)
        if best is None:
            self.skip(what, "no model-only step of this model was measured")
            return
        step, kind = best
        try:
            ds = self.dataset()
            from alexnet.data.augment import Augment

            # The real dataset's statistics (the model-only runs used a random batch's).
            step.augment = Augment.from_stats(ds.stats(), 224, input_norm=v.input_norm, seed=0)
            loader = self.loader(ds, decode)
            skip = loader.workers * getattr(loader, "prefetch", 2) + 1
            last: list[Any] = [None]

            def make_iter(epoch: int) -> Iterator[Any]:
                loader.set_epoch(epoch)
                return loader.iterate()

            def consume(b: Any, epoch: int) -> int:
                last[0], _ = step(b.images, b.labels, b.indices, epoch)
                return len(b.labels)

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchvision's decode_jpeg deprecation notices
                res = self.run_epochs(make_iter, consume, skip, self.args.time_budget, len(loader))
            extra = {"gpu_fraction": getattr(loader, "gpu_fraction", 0.0), "loader_workers": loader.workers}
            if hasattr(loader, "close"):
                loader.close()
            final_loss = float(last[0]) if last[0] is not None else None
        except Exception as e:  # noqa: BLE001
            self.add({**what, "img_per_s": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
            print(f"error {what}: {e}", flush=True)
            return
        row = {**what, **res, **extra, **self.data_fields(), "step": kind, "recipe": self.recipe(v, kind),
               "model_only_img_per_s": round(self.rates[(key, kind)], 1), "final_loss": final_loss}
        self.derive(row, key)
        self.add(row)
        print(f"end-to-end  {v.model:20s} decode {decode:5s} {kind:18s} {res['img_per_s']:10.1f} img/s  "
              f"(with epoch restarts {res['img_per_s_with_restarts']:.1f}; model-only {self.rates[(key, kind)]:.1f})",
              flush=True)

    def loader_only(self, decode: str) -> None:
        what = {"mode": "loader-only", "model": None, "variant": "uint8 batches to the device, no step",
                "loader": "alexnet BatchLoader", "decode": decode, "batch": self.args.batch, "workers": self.args.workers}
        cost = self.args.time_budget + 10 + (0 if "prepared" in self.data else self.args.build_estimate)
        if not self.fits(cost):
            self.skip(what, f"deadline: {self.elapsed():.0f}s elapsed + ~{cost:.0f}s > {self.args.deadline:.0f}s")
            return
        try:
            ds = self.dataset()
            loader = self.loader(ds, decode)
            skip = loader.workers * getattr(loader, "prefetch", 2) + 1

            def make_iter(epoch: int) -> Iterator[Any]:
                loader.set_epoch(epoch)
                return loader.iterate()

            def consume(b: Any, epoch: int) -> int:
                b.images.to(self.device, non_blocking=True)
                return len(b.labels)

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = self.run_epochs(make_iter, consume, skip, self.args.time_budget, len(loader))
            gpu_fraction = getattr(loader, "gpu_fraction", 0.0)
            if hasattr(loader, "close"):
                loader.close()
        except Exception as e:  # noqa: BLE001
            self.add({**what, "img_per_s": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
            print(f"error {what}: {e}", flush=True)
            return
        row = {**what, **res, "gpu_fraction": gpu_fraction, **self.data_fields()}
        self.derive(row, None)
        self.add(row)
        print(f"loader-only decode {decode:5s} {res['img_per_s']:10.1f} img/s", flush=True)

    def reference(self, imagenet_size: bool) -> None:
        """torchvision's reference recipe end to end: ImageFolder + PIL transforms in a DataLoader,
        torchvision's AlexNet step in the same precision and layout as ours."""
        what = {"mode": "end-to-end", "model": "torchvision alexnet",
                "variant": "reference recipe" + (", ImageNet-sized JPEGs" if imagenet_size else ""),
                "loader": "torch DataLoader + ImageFolder (PIL)", "decode": "cpu", "batch": self.args.batch,
                "workers": self.args.workers}
        build = 0 if "prepared" in self.data else self.args.build_estimate
        if imagenet_size:
            build += 0.75 * self.args.build_estimate  # 24k larger JPEGs, drawn on the spot
        cost = self.args.time_budget + 15 + build
        if not self.fits(cost):
            self.skip(what, f"deadline: {self.elapsed():.0f}s elapsed + ~{cost:.0f}s > {self.args.deadline:.0f}s")
            return
        key = "torchvision"
        if key not in self.steps:
            self.skip(what, "torchvision's eager model-only step was not measured")
            return
        step = self.steps[key][0]
        try:
            from torch.utils.data import DataLoader
            from torchvision import datasets, transforms

            self.dataset()  # for the photo kind, and the image folder of the same JPEGs
            if imagenet_size:
                if "folder_imagenet" not in self.data:
                    t = time.perf_counter()
                    n = self.args.imagenet_size_images
                    self.data["folder_imagenet"] = build_folder(self.args.work_dir / "imagenet-size", n, (375, 500),
                                                                self.args.build_procs, 1, self.data["kind"])
                    self.data["imagenet_build_s"] = round(time.perf_counter() - t, 1)
                folder = self.data["folder_imagenet"]
            else:
                folder = self.data["folder"]
            tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), transforms.Normalize(REF_MEAN, REF_STD)])
            ds = datasets.ImageFolder(str(folder), tf)
            workers = self.args.workers
            prefetch = 2  # DataLoader's default prefetch_factor
            skip = max(1, workers) * prefetch + 1
            step.augment = None  # the recipe's own transforms made the input

            def make_iter(epoch: int) -> Iterator[Any]:
                dl = DataLoader(ds, batch_size=self.args.batch, shuffle=True, num_workers=workers, drop_last=True,
                                pin_memory=self.cuda, generator=torch.Generator().manual_seed(epoch))
                return iter(dl)

            def consume(b: Any, epoch: int) -> int:
                x, y = b
                step(x, y, torch.arange(len(y)), epoch)
                return len(y)

            res = self.run_epochs(make_iter, consume, skip, self.args.time_budget, len(ds) // self.args.batch)
            sizes = [p.stat().st_size for p in list(Path(folder).glob("class0/*.jpg"))[:200]]
        except Exception as e:  # noqa: BLE001
            self.add({**what, "img_per_s": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
            print(f"error {what}: {e}", flush=True)
            return
        v = variants()[key]
        row = {**what, **res, **self.data_fields(), "step": "eager",
               "recipe": {**self.recipe(v, "eager", augment=False),
                          "augment": "PIL RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize"},
               "model_only_img_per_s": round(self.rates.get((key, "eager"), float("nan")), 1)}
        if imagenet_size:
            row.update(images=len(ds), image_size="500×375 JPEG q90", dataset_build_s=self.data.get("imagenet_build_s"))
        row["mean_jpeg_kb"] = round(float(np.mean(sizes)) / 1024, 1) if sizes else None
        self.derive(row, key)
        self.add(row)
        print(f"end-to-end  {'torchvision reference':20s} {'ImageNet-sized' if imagenet_size else '256×256':14s} "
              f"{res['img_per_s']:10.1f} img/s", flush=True)

    def add_ratios(self) -> None:
        """Each end-to-end row of ours: how many times the reference recipe on the same JPEGs."""
        ref = next((r for r in self.rows if r.get("variant") == "reference recipe" and r.get("img_per_s")), None)
        ref_in = next((r for r in self.rows if r.get("variant") == "reference recipe, ImageNet-sized JPEGs"
                       and r.get("img_per_s")), None)
        for r in self.rows:
            if r.get("mode") == "end-to-end" and r.get("loader") == "alexnet BatchLoader" and r.get("img_per_s"):
                if ref:
                    r["x_reference"] = round(r["img_per_s"] / ref["img_per_s"], 2)
                if ref_in:
                    r["x_reference_imagenet_size"] = round(r["img_per_s"] / ref_in["img_per_s"], 2)
        self.save()


# ---------------------------------------------------------------------------------------------------
# The plan


def plan(r: Runner) -> list[Callable[[], None]]:
    """Measurements in order of importance (a deadline drops the tail)."""
    a = r.args
    compiled = ["compile"] if a.compile else []
    tasks: list[Callable[[], None]] = []
    mo, e2e = "model-only" in a.only, "end-to-end" in a.only
    if mo or e2e:  # end-to-end trains with the steps made here
        for key in ("alexnet", "alexnet-nolrn", "alexnet-owt", "torchvision"):
            if mo or key in ("alexnet", "alexnet-owt", "torchvision"):
                tasks.append(lambda key=key: r.model_only(key, "eager"))
        if mo:
            tasks.append(lambda: r.model_only("torchvision", "eager", augment=False))
        for kind in compiled:
            for key in ("alexnet", "alexnet-owt"):
                tasks.append(lambda key=key, kind=kind: r.model_only(key, kind))
    if e2e:
        for decode in a.decode:
            for key in ("alexnet", "alexnet-owt"):
                tasks.append(lambda key=key, decode=decode: r.end_to_end(key, decode))
        tasks.append(lambda: r.reference(imagenet_size=False))
    # --tiny leaves out rows whose code path the rows above already run (another model, the same step).
    if mo and not a.tiny:
        for kind in compiled:
            tasks.append(lambda kind=kind: r.model_only("alexnet-nolrn", kind))
    if e2e:
        for decode in a.decode:
            tasks.append(lambda decode=decode: r.loader_only(decode))
        if a.imagenet_size_images > 0:
            tasks.append(lambda: r.reference(imagenet_size=True))
    if mo and not a.tiny:
        for kind in compiled:
            tasks.append(lambda kind=kind: r.model_only("torchvision", kind))
        tasks.append(lambda: r.model_only("alexnet-towers", "eager"))
        if "lrn-plain" in a.extras and a.compile:
            tasks.append(lambda: r.model_only("alexnet", "compile", lrn_mode="plain"))
        if "cudagraphs" in a.extras and a.compile and r.cuda:
            tasks.append(lambda: r.model_only("alexnet", "compile+cudagraphs"))
        if "towers-compiled" in a.extras and a.compile:
            tasks.append(lambda: r.model_only("alexnet-towers", "compile"))
    return tasks


# ---------------------------------------------------------------------------------------------------
# Markdown (the README's tables)


def _fmt(v: Any, spec: str = ",.0f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    ver = result.get("versions", {})
    lines = [
        f"**{result.get('device')}** · {result.get('host_cpus')} CPUs ({result.get('cpu', '?')}) · torch {ver.get('torch')} · "
        f"torchvision {ver.get('torchvision')} · triton {ver.get('triton')} · CUDA {ver.get('cuda')} · cuDNN {ver.get('cudnn')} · "
        f"driver {ver.get('driver')} · {str(result.get('date', ''))[:10]} · git {str(result.get('git_sha') or '')[:10]}"
        f"{' (dirty)' if result.get('git_dirty') else ''} · batch {result.get('config', {}).get('batch')} · "
        f"wall {result.get('wall_s')} s",
        "",
    ]
    mo = [r for r in rows if r.get("mode") == "model-only"]
    if mo:
        spec = next((r.get("peak_tflops_spec") for r in mo if r.get("peak_tflops_spec")), None)
        meas = next((r.get("peak_tflops_measured") for r in mo if r.get("peak_tflops_measured")), None)
        lines += [
            "Model only: random uint8 batch on the device → augmentation → forward, loss, backward, optimizer step "
            "(bf16 autocast + channels_last).",
            "",
            f"| model | variant | step | img/s | ms/step | TFLOP/s | MFU (vs {_fmt(spec)} / {_fmt(meas)}) | 90 epochs (h) | LRN share |",
            "|---|---|---|--:|--:|--:|--:|--:|--:|",
        ]
        for r in mo:
            if r.get("img_per_s") is None:
                why = r.get("skipped") or r.get("error")
                lines.append(f"| {r['model']} | {r.get('variant') or '—'} | {r.get('step')} | not measured: {why} | | | | | |")
                continue
            mfu = (f"{_fmt(r.get('mfu_spec'), '.1%')} / {_fmt(r.get('mfu_measured_peak'), '.1%')}"
                   if r.get("mfu_spec") is not None else "—")
            lines.append(f"| {r['model']} | {r.get('variant') or '—'} | {r['step']} | {_fmt(r['img_per_s'])} | "
                         f"{_fmt(r.get('ms_per_step'), '.2f')} | {_fmt(r.get('tflop_per_s'), '.1f')} | {mfu} | "
                         f"{_fmt(r.get('hours_90_epochs'), '.2f')} | {_fmt(r.get('lrn_share'), '.1%')} |")
        lines.append("")
    e2e = [r for r in rows if r.get("mode") in ("end-to-end", "loader-only")]
    if e2e:
        photos = {r.get("photos") for r in e2e if "photos" in r}
        kind = "real-photo" if photos == {True} else ("SYNTHETIC photo-like (no scikit-image)" if photos == {False} else "mixed")
        lines += [
            f"End to end: {kind} JPEGs → loader (workers) → augmentation on the device → step; steady state inside an "
            "epoch, after draining the prefetch queue.",
            "",
            "| model | mode | loader | decode | workers | step | img/s | × reference (same JPEGs / ImageNet-sized) | "
            "90 epochs (h) | with epoch restarts |",
            "|---|---|---|---|--:|---|--:|--:|--:|--:|",
        ]
        for r in e2e:
            name = r.get("model") or "—"
            if r.get("variant"):
                name += f" ({r['variant']})"
            if r.get("img_per_s") is None:
                why = r.get("skipped") or r.get("error")
                lines.append(f"| {name} | {r['mode']} | {r.get('loader')} | {r.get('decode')} | {r.get('workers')} | — | "
                             f"not measured: {why} | | | |")
                continue
            x = "—"
            if r.get("x_reference") is not None or r.get("x_reference_imagenet_size") is not None:
                x = f"{_fmt(r.get('x_reference'), '.1f')}× / {_fmt(r.get('x_reference_imagenet_size'), '.1f')}×"
            lines.append(f"| {name} | {r['mode']} | {r.get('loader')} | {r.get('decode')} | {r.get('workers')} | "
                         f"{r.get('step', '—')} | {_fmt(r['img_per_s'])} | {x} | {_fmt(r.get('hours_90_epochs'), '.2f')} | "
                         f"{_fmt(r.get('img_per_s_with_restarts'))} |")
        lines.append("")
    lines += targets(rows)
    fl = result.get("flops_per_image") or {}
    if fl:
        lines.append("FLOPs per image (forward + backward, FlopCounterMode, grouped-conv weight gradients counted "
                     "once per group): " + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in fl.items()) + ".")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 6's targets against this run's rows (one line each)."""
    def best(model: str) -> dict[str, Any] | None:
        ours = [r for r in rows if r.get("mode") == "end-to-end" and r.get("loader") == "alexnet BatchLoader"
                and r.get("model") == model and r.get("img_per_s")]
        return max(ours, key=lambda r: r["img_per_s"]) if ours else None

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out = []
    ref = next((r for r in rows if r.get("variant") == "reference recipe" and r.get("img_per_s")), None)
    for model, goal in (("alexnet", 20_000), ("alexnet-owt", 32_000)):
        r = best(model)
        if r is None:
            continue
        line = (f"- {model} end to end: {r['img_per_s']:,.0f} img/s ({r['decode']} decode, {r['step']} step; "
                f"90 epochs {r['hours_90_epochs']:.2f} h) against ≥ {goal:,}: {verdict(r['img_per_s'] >= goal)}")
        if ref:
            x = r["img_per_s"] / ref["img_per_s"]
            line += f"; {x:.1f}× the reference recipe on the same JPEGs (≥ 7×: {verdict(x >= 7)})"
        out.append(line)
    shares = [(r["step"], r["lrn_share"]) for r in rows if r.get("mode") == "model-only" and r.get("model") == "alexnet"
              and r.get("variant") == "" and r.get("lrn_share") is not None]
    if shares:
        out.append("- LRN's share of the paper net's step (1 − t(lrn=none)/t(paper), ≤ 15%): "
                   + ", ".join(f"{step} {sh:.1%} ({verdict(sh <= 0.15)})" for step, sh in shares))
    return (["Issue 6 targets, this run:", "", *out, ""]) if out else []


# ---------------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", type=Path, metavar="RESULTS.json", help="print the markdown tables of a result file and exit")
    ap.add_argument("--device", default=None, help="cuda (default when available), cuda:N, cpu")
    ap.add_argument("--tiny", action="store_true", help="toy scale (batch 2, few steps, 48 images): tests the code path")
    ap.add_argument("--only", choices=MODES, help="one of the two parts (default: both)")
    ap.add_argument("--time-budget", type=float, help="seconds per measurement, compilation excluded (default 5; tiny 0.5)")
    ap.add_argument("--deadline", type=float,
                    help="seconds for the whole run: what would end later is skipped (default 420 on CUDA; 0: none)")
    ap.add_argument("--batch", type=int, help="batch size (default 256; tiny 2)")
    ap.add_argument("--workers", type=int, help="loader workers, ours and the DataLoader's (default: CPU count - 1; tiny 1)")
    ap.add_argument("--images", type=int, help="real-photo JPEGs to build (default 32768; tiny 24)")
    ap.add_argument("--synthetic-images", type=int, default=16384, help="cap on the fallback synthetic set (slower to draw)")
    ap.add_argument("--imagenet-size-images", type=int,
                    help="ImageNet-sized JPEGs for the second reference run (default 24576; tiny 16; 0: skip it)")
    ap.add_argument("--decode", help="comma list of our loader's decode modes (default cpu,auto on CUDA; cpu otherwise)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also the torch.compile'd steps (default: on CUDA; with --tiny on the CPU: backend 'eager')")
    ap.add_argument("--compile-backend", help="torch.compile backend (default inductor; eager with --tiny on the CPU)")
    ap.add_argument("--extras", help="comma list of optional last rows if time remains: lrn-plain, cudagraphs, "
                                     "towers-compiled (default lrn-plain,cudagraphs; tiny none)")
    ap.add_argument("--amp", choices=["bf16", "none"], default="bf16", help="autocast dtype (default bf16)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--warmup", type=int, help="untimed steps after the first (default 5; tiny 0)")
    ap.add_argument("--rounds", type=int, help="timed rounds per model-only measurement, median kept (default 3; tiny 1)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; tiny 1)")
    ap.add_argument("--build-procs", type=int, help="processes drawing the JPEGs (default: CPU count)")
    ap.add_argument("--compile-estimate", type=float, default=75.0, help="seconds assumed per compilation before the first")
    ap.add_argument("--build-estimate", type=float, default=40.0, help="seconds assumed to build the photo set")
    ap.add_argument("--work-dir", type=Path, help="where the datasets are built (default: a temporary folder, removed)")
    ap.add_argument("--out", type=Path, default=ROOT / "results", help="folder of the result file")
    args = ap.parse_args(argv)
    if args.markdown:
        return args
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    cpus = os.cpu_count() or 2
    tiny = args.tiny
    defaults: dict[str, Any] = dict(
        time_budget=0.5 if tiny else 5.0,
        deadline=0.0 if not cuda else (300.0 if tiny else 420.0),
        batch=2 if tiny else 256,
        workers=1 if tiny else max(1, cpus - 1),
        images=24 if tiny else 32768,
        imagenet_size_images=16 if tiny else 24576,
        decode="cpu,auto" if cuda else "cpu",
        extras="" if tiny else "lrn-plain,cudagraphs",
        compile=cuda or tiny,
        compile_backend="inductor" if cuda else "eager",
        warmup=0 if tiny else 5,
        rounds=1 if tiny else 3,
        threads=1 if tiny and not cuda else None,
        build_procs=2 if tiny else cpus,
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if tiny:
        args.synthetic_images = min(args.synthetic_images, args.images)
    args.only = [args.only] if args.only else list(MODES)
    args.decode = [d for d in args.decode.split(",") if d]
    args.extras = [e for e in args.extras.split(",") if e]
    bad = [d for d in args.decode if d not in ("cpu", "cuda", "auto")]
    bad += [e for e in args.extras if e not in ("lrn-plain", "cudagraphs", "towers-compiled")]
    if bad:
        ap.error(f"unknown decode mode or extra {bad[0]!r}")
    if args.batch < 1 or args.workers < 0 or args.images < args.batch:
        ap.error("need --batch ≥ 1, --workers ≥ 0 and --images ≥ --batch")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: --device cuda but CUDA is not available (use --device cpu --tiny for the CPU smoke run)",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    own_work = args.work_dir is None
    args.work_dir = Path(tempfile.mkdtemp(prefix="alexnet-gpu-bench-")) if own_work else args.work_dir
    t0 = START
    try:
        # Every model and step kind compiles the same step function once: room for all of them.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as torchvision's reference training script sets it
        runner = Runner(args, device, {}, args.out / "gpu-pending.json", t0=t0)
        if "end-to-end" in args.only:
            runner.dataset()  # first: its worker processes fork before CUDA and the compilers start threads
        env = runner.env = environment(device)
        runner.path = args.out / f"gpu-{device_slug(env)}-{env['date'][:10]}.json"
        print(f"{env['device']} | {env['host_cpus']} CPUs | torch {torch.__version__} | batch {args.batch} | "
              f"workers {args.workers} | budget {args.time_budget}s per measurement | deadline {args.deadline or '—'}s",
              flush=True)
        vs = variants()
        for key in ("alexnet", "alexnet-owt", "torchvision"):
            runner.flops[key] = flops_per_image(vs[key].build)
        runner.flops["alexnet-nolrn"] = runner.flops["alexnet-towers"] = runner.flops["alexnet"]
        runner.flops_torch_raw = {"alexnet": flops_per_image(vs["alexnet"].build, fix_groups=False)}
        print("FLOPs/img (fwd+bwd): " + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in runner.flops.items()), flush=True)
        for task in plan(runner):
            t = time.perf_counter()
            task()
            if args.tiny:
                print(f"      ({time.perf_counter() - t:.1f} s)", flush=True)
        runner.add_ratios()
        runner.save()
        print()
        print(markdown(json.loads(runner.path.read_text())))
        print(f"\nwrote {runner.path} ({runner.elapsed():.0f} s)")
        return 0
    finally:
        if own_work:
            shutil.rmtree(args.work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
