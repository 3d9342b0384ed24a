"""Training throughput of the paper's network on one GPU: end to end, model only, MFU, hours for 90 epochs.

    benchmarks/gpu_run.sh OUTDIR                                        # the GPU machine's one run: preflight + this, ≤ 6 min
    PYTHONPATH=src python3 benchmarks/gpu.py --preflight                # seconds: versions, /dev/shm, GPU, LRN, one step
    PYTHONPATH=src python3 benchmarks/gpu.py                            # one H100: finishes within ~7 minutes
    PYTHONPATH=src python3 benchmarks/gpu.py --plan --device cuda       # the rows and their estimated seconds, anywhere
    PYTHONPATH=src python3 benchmarks/gpu.py --device cpu --tiny        # toy scale on the CPU: tests the code path
    python3 benchmarks/gpu.py --markdown benchmarks/results/gpu-….json  # the README's tables

A composition of :mod:`alexnet.perf` (timing, FLOPs, photo fixtures, the training step, torchvision's
reference recipe, ``alexnet train`` timed) and the package's own loader and step. What it measures,
headline rows first (:func:`plan` says the order):

* **train**: ``alexnet train`` itself, the engine's ``run()`` with its loader, logging, checkpoints
  and evaluation (:mod:`alexnet.perf.training`), on the same JPEGs: the second of two epochs.

* **end-to-end**: real-photo 256×256 JPEGs (q90) built on the spot (:mod:`alexnet.perf.fixtures`;
  without scikit-image, photo-like synthetic scenes, rows marked ``"photos": false``) → our
  ``BatchLoader`` with N worker processes (CPU decoding, then CPU+GPU "auto" decoding) → the §4.1
  augmentation on the GPU → :class:`alexnet.engine.fast_step.FastStep` (compiled on CUDA), for
  ``alexnet`` and ``alexnet-owt``; then torchvision's reference recipe on the same machine and the same
  JPEGs (ImageFolder + PIL transforms in a DataLoader with the same workers, torchvision's AlexNet
  step in the same precision and layout), and on ImageNet-sized JPEGs (~500×375). A loader
  prefetches ``workers × prefetch`` batches while its consumer is busy elsewhere; every epoch skips
  its first ``workers × prefetch + 1`` batches before the clock starts, so ``img_per_s`` is the steady
  state inside an epoch; ``img_per_s_with_restarts`` also counts this small set's epoch boundaries.
* **model-only**: a random uint8 batch already on the device → augmentation → forward, loss,
  backward, update (FastStep, batch 256, bf16 autocast on CUDA + channels_last), eager (PaperSGD's foreach
  update) and compiled (the update fused per parameter), for ``alexnet`` (fused Triton LRN),
  ``alexnet`` with ``lrn="none"`` (LRN's share of the step = 1 - t(none)/t(paper)), ``alexnet-owt``
  and torchvision's AlexNet with ``torch.optim.SGD``, plus torchvision's net on random float input
  without augmentation (the usual published setting, to compare machines). Warm-up and compilation
  excluded; the median of three rounds.
* **loader-only**: the same loader delivering uint8 batches to the device, no step.
* **MFU** from FLOPs counted on the meta device (:mod:`alexnet.perf.flops`) against the card's dense
  bf16 peak and a measured matmul ceiling; projected hours for 90 epochs of ImageNet.

Every phase is guarded: a failing dataset build, FLOP count or row becomes an ``error`` entry and
the run goes on; each row has a time limit (``--row-timeout``: a hung loader worker cannot block the
run) and a deadline (``--deadline``) skips what no longer fits ("skipped" rows). The results file
(``--out``/gpu-<device>-<date>.json) is rewritten after every row, so a killed run keeps what it
measured; each row holds device, model, mode, img_per_s, recipe, batch, workers, versions, date, git
SHA and host CPU count. Targets and verdicts: benchmarks/README.md.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the deadline counts from here: imports of torch & co. included

import argparse
import gc
import json
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from alexnet import models
from alexnet.data.format import PreparedDataset
from alexnet.data.loader import BatchLoader
from alexnet.data.augment import Augment
from alexnet.environment import environment, versions
from alexnet.models import lrn_fast
from alexnet.models.layers import two_tower_convs
from alexnet.perf import fixtures, flops, reference, steps, timing, training
from alexnet.perf.preflight import preflight

ROOT = Path(__file__).resolve().parent
MODES = ("model-only", "end-to-end", "train")


# ---------------------------------------------------------------------------------------------------
# What is timed


@dataclass
class Variant:
    key: str  # unique name of the model build
    model: str  # "alexnet", "alexnet-owt", "torchvision alexnet"
    variant: str  # "" or what differs from the model's default
    build: Callable[[], nn.Module]
    ours: bool  # our model + PaperSGD + our registry's input norm; else torchvision + torch SGD
    input_norm: str


def variants() -> dict[str, Variant]:
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
    if not v.ours or v.key == "alexnet-nolrn" or v.model == "alexnet-owt":
        return None
    mode = lrn_mode or lrn_fast.mode()
    if mode == "triton" or (mode == "auto" and lrn_fast.HAVE_TRITON and device.type == "cuda"):
        return "triton"
    return "plain"


def device_slug(device_name: str, device_type: str) -> str:
    if device_type == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")[:48]


def _error(e: BaseException) -> str:
    text = str(e).splitlines()[0][:300] if str(e) else ""
    return f"{type(e).__name__}: {text}"


# ---------------------------------------------------------------------------------------------------
# The runner: one guarded measurement per row


@dataclass
class Runner:
    args: argparse.Namespace
    device: torch.device
    env: dict[str, Any]
    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    # The step each model trains with end to end: variant key -> (FastStep, step kind).
    steps: dict[str, tuple[Any, str]] = field(default_factory=dict)
    rates: dict[tuple[str, str], float] = field(default_factory=dict)  # model-only img/s per (key, step kind)
    flops: dict[str, float] = field(default_factory=dict)
    flops_torch_raw: dict[str, float] = field(default_factory=dict)  # FlopCounterMode's own (grouped-conv bug)
    data: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)  # phases outside the rows that failed
    plan: list[dict[str, Any]] = field(default_factory=list)  # the rows planned, with their estimates
    t0: float = field(default_factory=time.perf_counter)
    compile_s: list[float] = field(default_factory=list)

    # -- bookkeeping ---------------------------------------------------------------------------------

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def device_name(self) -> str:
        return (self.env.get("cuda_device") if self.cuda else self.env.get("processor")) or self.device.type

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def compile_estimate(self) -> float:
        return 1.3 * max(self.compile_s) if self.compile_s else self.args.compile_estimate

    def common(self) -> dict[str, Any]:
        e = self.env
        return {"device": self.device_name, "device_type": self.device.type, "host_cpus": e.get("cpu_count"),
                "versions": versions(e), "date": e.get("date_utc"), "git_sha": e.get("git_sha"),
                "git_dirty": e.get("git_dirty")}

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {**self.common(), **row}
        self.rows.append(row)
        self.save()
        return row

    def save(self) -> None:
        result = {**self.common(), "cpu": self.env.get("processor"), "environment": self.env,
                  "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
                  "flops_per_image": self.flops, "flops_per_image_torch_formula": self.flops_torch_raw,
                  "errors": self.errors, "plan": self.plan, "wall_s": round(self.elapsed(), 1), "rows": self.rows}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, self.path)

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run a phase outside the rows (dataset build, FLOP count); a failure is recorded, not raised."""
        try:
            with timing.time_limit(self.args.row_timeout):
                return fn()
        except Exception as e:  # noqa: BLE001 - what fails is recorded; the rows that need it fail on their own
            self.errors.append({"phase": name, "error": _error(e)})
            self.save()
            print(f"error {name}: {_error(e)}", flush=True)
            return None

    def measure(self, what: dict[str, Any], cost_s: float, fn: Callable[[], dict[str, Any] | None]) -> None:
        """One row: skipped when it would end past the deadline; an ``error`` row when ``fn`` raises or
        runs past ``--row-timeout``; else ``what`` + what ``fn`` returns, with TFLOP/s, MFU and hours."""
        a = self.args
        if a.deadline > 0 and self.elapsed() + cost_s > a.deadline:
            reason = f"deadline: {self.elapsed():.0f}s elapsed + ~{cost_s:.0f}s > {a.deadline:.0f}s"
            print(f"skip  {what.get('mode', '')} {what.get('model') or ''} {what.get('variant', '')} "
                  f"{what.get('step', what.get('loader', ''))}: {reason}", flush=True)
            self.add({**what, "img_per_s": None, "skipped": reason})
            return
        t = time.perf_counter()
        try:
            with timing.time_limit(a.row_timeout):
                row = fn()
        except Exception as e:  # noqa: BLE001 - one failing row must not lose the others
            self.add({**what, "img_per_s": None, "error": _error(e)})
            print(f"error {what}: {_error(e)}", flush=True)
            return
        finally:
            self.free()  # also the steps no longer needed
        if row is not None:
            row = {**what, **row, "row_s": round(time.perf_counter() - t, 1)}
            if row.get("img_per_s"):
                row.update(flops.derived(row["img_per_s"], self.flops.get(row.pop("_flops_key", None) or ""),
                                         self.device_name if self.cuda else None))
            row.pop("_flops_key", None)
            self.add(row)
        if a.tiny:
            print(f"      ({time.perf_counter() - t:.1f} s)", flush=True)

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    # -- steps ---------------------------------------------------------------------------------------

    def recipe(self, v: Variant, step: Any, augment: bool = True, lrn_mode: str | None = None) -> dict[str, Any]:
        a = self.args
        return {"amp": a.amp, "channels_last": a.channels_last, "compile": step.compiled,
                "compile_backend": a.compile_backend if step.compiled else None, "cuda_graphs": step.cuda_graphs,
                "lr": steps.LR, "optimizer": steps.optimizer_label(step),
                "augment": "§4.1 on the device (crop, flip, PCA noise, mean)" if augment else "none (random float input)",
                "input_norm": v.input_norm if augment else None, "lrn": lrn_impl(v, self.device, lrn_mode),
                "cudnn_benchmark": torch.backends.cudnn.benchmark if self.cuda else None}

    def make_step(self, v: Variant, kind: str, stats: dict[str, torch.Tensor] | None) -> Any:
        """A FastStep for ``v`` ("eager", "compile", "compile+cudagraphs")."""
        torch.manual_seed(0)
        return steps.make_step(v.build(), self.device, ours=v.ours, stats=stats, input_norm=v.input_norm,
                               amp=self.args.amp, channels_last=self.args.channels_last, compile=kind != "eager",
                               cuda_graphs=kind == "compile+cudagraphs", compile_backend=self.args.compile_backend)

    def model_only(self, key: str, kind: str, *, augment: bool = True, lrn_mode: str | None = None) -> None:
        v = variants()[key]
        variant = v.variant + ("" if augment else ("; " if v.variant else "") + "no augmentation (random float input)")
        if lrn_mode:
            variant = (variant + "; " if variant else "") + f"ALEXNET_LRN={lrn_mode}"
        what = {"mode": "model-only", "model": v.model, "variant": variant, "step": kind, "batch": self.args.batch}
        self.measure(what, self.model_only_cost(kind), lambda: self._model_only(v, kind, variant, augment, lrn_mode))

    def model_only_cost(self, kind: str) -> float:
        return self.args.time_budget + 10 + (self.compile_estimate() if kind != "eager" else 0)

    def _model_only(self, v: Variant, kind: str, variant: str, augment: bool, lrn_mode: str | None) -> dict[str, Any]:
        b = self.args.batch
        u8, labels, indices = steps.random_batch(b, 256, 1000, self.device)
        xf = None
        if not augment:
            gen = torch.Generator(device="cpu").manual_seed(1)
            fmt = torch.channels_last if self.args.channels_last else torch.contiguous_format
            xf = torch.randn(b, 3, 224, 224, generator=gen).to(self.device).contiguous(memory_format=fmt)
        counter = [0]
        with lrn_fast.use_mode(lrn_mode or lrn_fast.mode()):
            step = self.make_step(v, kind, steps.random_stats(u8) if augment else None)

            def one() -> Any:
                counter[0] += 1  # a new "epoch" per step: new crops, flips and colour noise every time
                if xf is not None:
                    return step(xf, labels, indices, 0)
                return step(u8, labels, indices, counter[0])

            t = time.perf_counter()
            loss, _ = one()  # the first step compiles (and runs cuDNN's autotuning)
            timing.sync(self.device)
            first_s = time.perf_counter() - t
            if kind != "eager":
                self.compile_s.append(first_s)
            tm = timing.time_steps(one, self.device, self.args.time_budget, self.args.warmup, rounds=self.args.rounds,
                                   min_steps=1 if self.args.tiny else 2)
            final_loss = float(loss)
        rate = b / tm["s_per_step"]
        row: dict[str, Any] = {"img_per_s": round(rate, 1), "ms_per_step": round(tm["s_per_step"] * 1e3, 3),
                               "first_step_s": round(first_s, 1), "workers": 0,
                               "recipe": self.recipe(v, step, augment, lrn_mode), "timing": tm,
                               "loss_first_step": round(final_loss, 4), "_flops_key": v.key}
        if augment and not lrn_mode:
            self.rates[(v.key, kind)] = rate
            if v.key in ("alexnet", "alexnet-owt", "torchvision") and v.key not in self.steps:
                self.steps[v.key] = (step, kind)  # the first measured: the headline kind (see plan)
        self.lrn_share(row, v.key, kind, variant)
        share = f"  LRN share {row['lrn_share']:.1%}" if row.get("lrn_share") is not None else ""
        print(f"model-only  {v.model:20s} {variant[:28]:28s} {kind:18s} {rate:10.1f} img/s  "
              f"{tm['s_per_step'] * 1e3:8.2f} ms/step  first step {first_s:6.1f}s{share}", flush=True)
        del step
        return row

    def lrn_share(self, row: dict[str, Any], key: str, kind: str, variant: str) -> None:
        """1 - t(lrn=none)/t(paper) in the same step kind, on whichever of the pair is measured second."""
        pair = {"alexnet": "alexnet-nolrn", "alexnet-nolrn": "alexnet"}.get(key)
        if pair is None or (pair, kind) not in self.rates or variant not in ("", "lrn=none"):
            return
        share = round(1.0 - self.rates[("alexnet", kind)] / self.rates[("alexnet-nolrn", kind)], 4)  # t ∝ 1/rate
        row["lrn_share"] = share
        for r in self.rows:  # also on the other row of the pair
            if r.get("mode") == "model-only" and r.get("model") == "alexnet" and r.get("variant") in ("", "lrn=none") \
                    and r.get("step") == kind:
                r["lrn_share"] = share

    # -- data ----------------------------------------------------------------------------------------

    def dataset(self) -> PreparedDataset:
        """The prepared 256×256 JPEG dataset (built once, in worker processes) and its image folder."""
        if "error" in self.data:
            raise RuntimeError(f"the dataset could not be built ({self.data['error']})")
        if "prepared" not in self.data:
            try:
                self._build_dataset()
            except Exception as e:  # noqa: BLE001 - remembered: the rows that need it fail at once
                self.data["error"] = _error(e)
                raise
        return self.data["prepared"]

    def _build_dataset(self) -> None:
        kind = "photos" if fixtures.photos_available() else "synthetic"
        n = self.args.images if kind == "photos" else min(self.args.images, self.args.synthetic_images)
        work = self.args.work_dir
        t = time.perf_counter()
        # A validation split for the train rows: whole batches (a last partial one would compile
        # evaluation twice), about ImageNet's 50k : 1.28M.
        n_val = self.args.batch * max(2, n // 25 // self.args.batch)
        # 1000 classes, as the model-only rows' networks: the train rows' compiled graph is theirs
        # (Inductor's cache serves it).
        root = fixtures.make_photo_dataset(work / "photos", n, n_val=n_val, kind=kind, procs=self.args.build_procs,
                                           classes=1000)
        ds = PreparedDataset(root, "train")
        t_build = time.perf_counter() - t
        folder = fixtures.write_image_folder(ds, work / "imagefolder")
        self.data.update(prepared=ds, root=root, n_val=n_val, folder=folder, kind=kind, build_s=round(time.perf_counter() - t, 1),
                         build_prepared_s=round(t_build, 1), n=len(ds),
                         mean_jpeg_kb=round(float(ds.index[:, 1].mean()) / 1024, 1))
        print(f"data  {len(ds)} {'real-photo' if kind == 'photos' else 'SYNTHETIC (no scikit-image)'} 256×256 "
              f"JPEGs q90, {self.data['mean_jpeg_kb']} KB each, built in {self.data['build_s']} s", flush=True)

    def data_fields(self) -> dict[str, Any]:
        d = self.data
        return {"photos": d["kind"] == "photos", "images": d["n"], "image_size": "256×256 JPEG q90",
                "mean_jpeg_kb": d["mean_jpeg_kb"], "dataset_build_s": d["build_s"]}

    def data_cost(self) -> float:
        return 0 if "prepared" in self.data else self.args.build_estimate

    def loader(self, ds: PreparedDataset, decode: str) -> BatchLoader:
        return BatchLoader(ds, self.args.batch, shuffle=True, seed=0, workers=self.args.workers, pin_memory=self.cuda,
                           decode=decode, device=self.device if self.cuda else None)

    def run_loader(self, decode: str, consume: Callable[[Any, int], int]) -> tuple[dict[str, Any], BatchLoader]:
        """Steady-state throughput of our loader feeding ``consume``; the loader is closed after."""
        ds = self.dataset()
        loader = self.loader(ds, decode)
        try:
            def make_iter(epoch: int) -> Iterator[Any]:
                loader.set_epoch(epoch)
                return loader.iterate()

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchvision's decode_jpeg deprecation notices
                res = timing.steady_state(make_iter, consume, loader.workers * loader.prefetch + 1,
                                          self.args.time_budget, len(loader), self.device)
        finally:
            loader.close()
        return res, loader

    def end_to_end(self, key: str, decode: str) -> None:
        v = variants()[key]
        what = {"mode": "end-to-end", "model": v.model, "variant": v.variant, "loader": "alexnet BatchLoader",
                "decode": decode, "batch": self.args.batch, "workers": self.args.workers}
        self.measure(what, self.end_to_end_cost(), lambda: self._end_to_end(v, decode))

    def end_to_end_cost(self) -> float:
        return self.args.time_budget + 15 + self.data_cost()

    def _end_to_end(self, v: Variant, decode: str) -> dict[str, Any]:
        if v.key not in self.steps:
            raise RuntimeError("no model-only step of this model was measured")
        step, kind = self.steps[v.key]
        ds = self.dataset()
        # The real dataset's statistics (the model-only runs used a random batch's).
        step.augment = Augment.from_stats(ds.stats(), 224, input_norm=v.input_norm, seed=0)
        last: list[Any] = [None]

        def consume(b: Any, epoch: int) -> int:
            last[0], _ = step(b.images, b.labels, b.indices, epoch)
            return len(b.labels)

        res, loader = self.run_loader(decode, consume)
        print(f"end-to-end  {v.model:20s} decode {decode:5s} {kind:18s} {res['img_per_s']:10.1f} img/s  "
              f"(with epoch restarts {res['img_per_s_with_restarts']:.1f}; model-only {self.rates[(v.key, kind)]:.1f})",
              flush=True)
        return {**res, "gpu_fraction": loader.gpu_fraction, "loader_workers": loader.workers, **self.data_fields(),
                "step": kind, "recipe": self.recipe(v, step), "model_only_img_per_s": round(self.rates[(v.key, kind)], 1),
                "final_loss": float(last[0]) if last[0] is not None else None, "_flops_key": v.key}

    def loader_only(self, decode: str) -> None:
        what = {"mode": "loader-only", "model": None, "variant": "uint8 batches to the device, no step",
                "loader": "alexnet BatchLoader", "decode": decode, "batch": self.args.batch, "workers": self.args.workers}
        self.measure(what, self.loader_only_cost(), lambda: self._loader_only(decode))

    def loader_only_cost(self) -> float:
        return self.args.time_budget + 10 + self.data_cost()

    def _loader_only(self, decode: str) -> dict[str, Any]:
        def consume(b: Any, epoch: int) -> int:
            b.images.to(self.device, non_blocking=True)
            return len(b.labels)

        res, loader = self.run_loader(decode, consume)
        print(f"loader-only decode {decode:5s} {res['img_per_s']:10.1f} img/s", flush=True)
        return {**res, "gpu_fraction": loader.gpu_fraction, **self.data_fields()}

    def reference(self, imagenet_size: bool) -> None:
        """torchvision's reference recipe end to end: ImageFolder + PIL transforms in a DataLoader,
        torchvision's AlexNet step in the same precision and layout as ours."""
        what = {"mode": "end-to-end", "model": "torchvision alexnet",
                "variant": "reference recipe" + (", ImageNet-sized JPEGs" if imagenet_size else ""),
                "loader": "torch DataLoader + ImageFolder (PIL)", "decode": "cpu", "batch": self.args.batch,
                "workers": self.args.workers}
        self.measure(what, self.reference_cost(imagenet_size), lambda: self._reference(imagenet_size))

    def reference_cost(self, imagenet_size: bool) -> float:
        return self.args.time_budget + 15 + self.data_cost() + (0.75 * self.args.build_estimate if imagenet_size else 0)

    def _reference(self, imagenet_size: bool) -> dict[str, Any]:
        key = "torchvision"
        if key not in self.steps:
            raise RuntimeError("torchvision's eager model-only step was not measured")
        step = self.steps[key][0]
        self.dataset()  # for the photo kind, and the image folder of the same JPEGs
        if imagenet_size:
            if "folder_imagenet" not in self.data:
                t = time.perf_counter()
                self.data["folder_imagenet"] = fixtures.make_image_folder(
                    self.args.work_dir / "imagenet-size", self.args.imagenet_size_images, (375, 500),
                    kind=self.data["kind"], seed=1, procs=self.args.build_procs)
                self.data["imagenet_build_s"] = round(time.perf_counter() - t, 1)
            folder = self.data["folder_imagenet"]
        else:
            folder = self.data["folder"]
        ds = reference.reference_dataset(folder)
        workers = self.args.workers
        step.augment = None  # the recipe's own transforms made the input

        def consume(b: Any, epoch: int) -> int:
            x, y = b
            step(x, y, torch.arange(len(y)), epoch)
            return len(y)

        res = timing.steady_state(lambda e: reference.reference_epoch(ds, e, self.args.batch, workers, self.cuda), consume,
                                  max(1, workers) * reference.PREFETCH + 1, self.args.time_budget,
                                  len(ds) // self.args.batch, self.device)
        sizes = [p.stat().st_size for p in list(Path(folder).glob("class0/*.jpg"))[:200]]
        v = variants()[key]
        row = {**res, **self.data_fields(), "step": "eager",
               "recipe": {**self.recipe(v, step, augment=False), "augment": reference.RECIPE},
               "model_only_img_per_s": round(self.rates.get((key, "eager"), float("nan")), 1), "_flops_key": key}
        if imagenet_size:
            row.update(images=len(ds), image_size="500×375 JPEG q90", dataset_build_s=self.data.get("imagenet_build_s"))
        row["mean_jpeg_kb"] = round(float(np.mean(sizes)) / 1024, 1) if sizes else None
        print(f"end-to-end  {'torchvision reference':20s} {'ImageNet-sized' if imagenet_size else '256×256':14s} "
              f"{res['img_per_s']:10.1f} img/s", flush=True)
        return row

    def train(self, decode: str) -> None:
        """``alexnet train`` itself (the engine's ``run()``): the paper's recipe with this run's
        speed switches, a warm-up epoch and a timed one on the same JPEGs, with the run's loader,
        logging, checkpoints (one mid-epoch, one at each epoch end) and evaluation."""
        a = self.args
        what = {"mode": "train", "model": "alexnet", "variant": "alexnet train (engine run(), paper recipe)",
                "loader": "alexnet BatchLoader", "decode": decode, "batch": a.batch, "workers": a.workers}
        self.measure(what, self.train_cost(), lambda: self._train(decode))

    def train_cost(self) -> float:
        a = self.args
        return 2 * a.time_budget + 20 + self.data_cost() + (self.compile_estimate() if self.cuda and a.compile else 0)

    def _train(self, decode: str) -> dict[str, Any]:
        a = self.args
        self.dataset()
        steps_per_epoch = 3 if a.tiny else self.data["n"] // a.batch  # --tiny: the code path, in seconds
        # On the CPU, Inductor would compile for minutes: the train rows there run eager (the
        # fast recipe's "auto" does the same).
        compile = a.compile and self.cuda
        cfg = training.train_config(self.data["root"], device=str(self.device), batch=a.batch, workers=a.workers,
                                    decode=decode, amp=a.amp, channels_last=a.channels_last, compile=compile,
                                    save_every=max(1, steps_per_epoch // 2), max_steps_per_epoch=3 if a.tiny else 0)
        out = a.work_dir / f"train-{decode}"
        shutil.rmtree(out, ignore_errors=True)

        def log(line: str) -> None:
            if a.tiny or line.startswith(("epoch", "warning")):
                print(f"      train | {line}", flush=True)

        try:
            res = training.timed_run(cfg, out, log=log, count_syncs=self.cuda)
        finally:
            shutil.rmtree(out, ignore_errors=True)  # ~0.5 GB per checkpoint
        print(f"train       {'alexnet':20s} decode {decode:5s} {'compile' if compile else 'eager':18s} "
              f"{res['img_per_s']:10.1f} img/s  (epoch with evaluation and checkpoints: {res['img_per_s_epoch_wall']:.1f}; "
              f"first epoch {res['first_epoch_s']:.0f} s)", flush=True)
        recipe = {"recipe": "paper", "amp": cfg.amp, "channels_last": cfg.channels_last, "compile": cfg.compile,
                  "optimizer": "PaperSGD §5 (" + ("fused per parameter, compiled" if cfg.compile else "foreach") + ")",
                  "lr": cfg.lr, "schedule": cfg.schedule, "augment": "§4.1 on the device (crop, flip, PCA noise, mean)",
                  "eval": "centre crop, every epoch", "save_every": cfg.save_every, "keep_checkpoints": cfg.keep_checkpoints,
                  "cudnn_benchmark": torch.backends.cudnn.benchmark if self.cuda else None}
        return {**res, **self.data_fields(), "step": "compile" if compile else "eager", "recipe": recipe,
                "_flops_key": "alexnet"}

    def add_ratios(self) -> None:
        """Each end-to-end row of ours: how many times the reference recipe on the same JPEGs."""
        ref = next((r for r in self.rows if r.get("variant") == "reference recipe" and r.get("img_per_s")), None)
        ref_in = next((r for r in self.rows if r.get("variant") == "reference recipe, ImageNet-sized JPEGs"
                       and r.get("img_per_s")), None)
        for r in self.rows:
            if r.get("mode") in ("end-to-end", "train") and r.get("loader") == "alexnet BatchLoader" and r.get("img_per_s"):
                if ref:
                    r["x_reference"] = round(r["img_per_s"] / ref["img_per_s"], 2)
                if ref_in:
                    r["x_reference_imagenet_size"] = round(r["img_per_s"] / ref_in["img_per_s"], 2)
        self.save()


# ---------------------------------------------------------------------------------------------------
# The plan


@dataclass
class Task:
    """One row of the plan: what it measures, its estimated seconds (from this run's settings, before
    anything is measured; the deadline check re-estimates with the compile times seen so far) and
    the measurement."""

    label: str
    estimate_s: float
    run: Callable[[], None]


def plan(r: Runner) -> list[Task]:
    """Measurements in order of importance (a deadline drops the tail). The headline rows first: the
    paper's net compiled and, right after it, without LRN (LRN's share of the step); ``alexnet
    train`` itself (the engine's run(): what a user gets); the same step end to end; torchvision's
    reference recipe on the same JPEGs (after its model-only step); alexnet-owt model-only and end to
    end. Then the GPU-decoding rows (nvJPEG: a sticky CUDA error there cannot cost a row above), then
    the rest, then the extras."""
    a = r.args
    main = "compile" if a.compile else "eager"  # the step alexnet train runs on this device (fast recipe)
    other = ["eager"] if a.compile else []
    mo, e2e, tr = "model-only" in a.only, "end-to-end" in a.only, "train" in a.only
    first = [d for d in a.decode if d == "cpu"][:1] or a.decode[:1]  # the headline rows' decoding
    gpu_decode = [d for d in a.decode if d not in first]
    t: list[Task] = []

    def model_only(key: str, kind: str, **kw: Any) -> None:
        label = f"model-only {key} {kind}" + "".join(f" {k}={v}" for k, v in kw.items())
        t.append(Task(label, r.model_only_cost(kind), lambda: r.model_only(key, kind, **kw)))

    def end_to_end(key: str, d: str) -> None:
        t.append(Task(f"end-to-end {key} decode {d}", r.end_to_end_cost(), lambda: r.end_to_end(key, d)))

    def train(d: str) -> None:
        t.append(Task(f"train alexnet decode {d}", r.train_cost(), lambda: r.train(d)))

    model_only("alexnet", main)  # also what the end-to-end rows of alexnet train with
    if mo and a.compile:
        model_only("alexnet-nolrn", "compile")
    for d in first if tr else []:
        train(d)
    for d in first if e2e else []:
        end_to_end("alexnet", d)
    model_only("torchvision", "eager")  # also the reference recipe's step
    if e2e:
        t.append(Task("end-to-end torchvision reference recipe", r.reference_cost(False), lambda: r.reference(False)))
    model_only("alexnet-owt", main)
    for d in first if e2e else []:
        end_to_end("alexnet-owt", d)
    for d in gpu_decode:
        if e2e:
            end_to_end("alexnet", d)
            end_to_end("alexnet-owt", d)
        if tr:
            train(d)
    if mo:
        for kind in other:
            model_only("alexnet", kind)
            model_only("alexnet-owt", kind)
        model_only("alexnet-nolrn", "eager")
        model_only("torchvision", "eager", augment=False)
    if e2e:
        for d in a.decode:
            t.append(Task(f"loader-only decode {d}", r.loader_only_cost(), lambda d=d: r.loader_only(d)))
        if a.imagenet_size_images > 0:
            t.append(Task("end-to-end torchvision reference recipe, ImageNet-sized JPEGs", r.reference_cost(True),
                          lambda: r.reference(True)))
    # --tiny leaves out rows whose code path the rows above already run (another model, the same step).
    if mo and not a.tiny:
        if a.compile:
            model_only("torchvision", "compile")
        model_only("alexnet-towers", "eager")
        if "lrn-plain" in a.extras and a.compile:
            model_only("alexnet", "compile", lrn_mode="plain")
        if "cudagraphs" in a.extras and a.compile and r.cuda:
            model_only("alexnet", "compile+cudagraphs")
        if "towers-compiled" in a.extras and a.compile:
            model_only("alexnet-towers", "compile")
    return t


def print_plan(tasks: list[Task], elapsed: float, deadline: float) -> None:
    """The plan with each row's estimate and the running total against the deadline."""
    total = elapsed
    print(f"plan: {len(tasks)} rows; {elapsed:.0f} s elapsed; deadline {deadline:.0f} s" if deadline else
          f"plan: {len(tasks)} rows; {elapsed:.0f} s elapsed; no deadline", flush=True)
    for i, task in enumerate(tasks, 1):
        total += task.estimate_s
        late = "  (past the deadline: skipped unless earlier rows are faster)" if deadline and total > deadline else ""
        print(f"  {i:2d}. {task.label:60s} ~{task.estimate_s:4.0f} s  (ends ~{total:4.0f} s){late}", flush=True)


# ---------------------------------------------------------------------------------------------------
# Markdown (the README's tables)


def _precision(config: dict[str, Any]) -> str:
    amp = config.get("amp", "bf16")  # results written before the option existed ran bf16
    parts = ["bf16 autocast" if amp == "bf16" else "fp32"]
    if config.get("channels_last", True):
        parts.append("channels_last")
    return " + ".join(parts)


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
    for err in result.get("errors") or []:
        lines += [f"**{err['phase']} failed**: {err['error']}", ""]
    mo = [r for r in rows if r.get("mode") == "model-only"]
    if mo:
        spec = next((r.get("peak_tflops_spec") for r in mo if r.get("peak_tflops_spec")), None)
        meas = next((r.get("peak_tflops_measured") for r in mo if r.get("peak_tflops_measured")), None)
        lines += [
            "Model only: random uint8 batch on the device → augmentation → forward, loss, backward, optimizer step "
            f"({_precision(result.get('config', {}))}).",
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
    e2e = [r for r in rows if r.get("mode") in ("end-to-end", "loader-only", "train")]
    if e2e:
        photos = {r.get("photos") for r in e2e if "photos" in r}
        kind = "real-photo" if photos == {True} else ("SYNTHETIC photo-like (no scikit-image)" if photos == {False} else "mixed")
        lines += [
            f"End to end: {kind} JPEGs → loader (workers) → augmentation on the device → step; steady state inside an "
            "epoch, after draining the prefetch queue. Train: `alexnet train` itself (the engine's run()), the second "
            "of two epochs as the run reports it; the last column counts its evaluation and checkpoints too.",
            "",
            "| model | mode | loader | decode | workers | step | img/s | × reference (same JPEGs / ImageNet-sized) | "
            "90 epochs (h) | with epoch restarts (train: whole epoch) |",
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
                         f"{_fmt(r.get('img_per_s_with_restarts', r.get('img_per_s_epoch_wall')))} |")
        lines.append("")
    fl = result.get("flops_per_image") or {}
    if fl:
        lines.append("FLOPs per image (forward + backward, FlopCounterMode, grouped-conv weight gradients counted "
                     "once per group): " + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in fl.items()) + ".")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", type=Path, metavar="RESULTS.json", help="print the markdown tables of a result file and exit")
    ap.add_argument("--preflight", action="store_true",
                    help="seconds: versions, /dev/shm, the GPU, the LRN op and one compiled step at the paper's shapes")
    ap.add_argument("--plan", action="store_true",
                    help="print the rows this run would measure, each with its estimated seconds, and exit (no GPU "
                         "needed: --plan --device cuda shows the GPU machine's plan)")
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
    ap.add_argument("--amp", choices=["bf16", "none"],
                    help="autocast dtype (default bf16 on CUDA, none on the CPU: CPUs without native bf16 "
                         "emulate it, about 60x slower than fp32)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--warmup", type=int, help="untimed steps after the first (default 5; tiny 0)")
    ap.add_argument("--rounds", type=int, help="timed rounds per model-only measurement, median kept (default 3; tiny 1)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; tiny 1)")
    ap.add_argument("--build-procs", type=int, help="processes drawing the JPEGs (default: CPU count)")
    ap.add_argument("--row-timeout", type=float,
                    help="seconds one row (or the dataset build, or the FLOP count) may take before it is abandoned "
                         "as an error row (default 300 on CUDA, 120 otherwise; 0: none)")
    ap.add_argument("--compile-estimate", type=float, default=75.0, help="seconds assumed per compilation before the first")
    ap.add_argument("--build-estimate", type=float, default=40.0, help="seconds assumed to build the photo set")
    ap.add_argument("--work-dir", type=Path, help="where the datasets are built (default: a temporary folder, removed)")
    ap.add_argument("--out", type=Path, default=ROOT / "results", help="folder of the result file")
    args = ap.parse_args(argv)
    if args.markdown or args.preflight:
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
        row_timeout=300.0 if cuda else 120.0,
        amp="bf16" if cuda else "none",
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
    if args.preflight:
        return 0 if preflight(torch.device(args.device) if args.device else None) else 1
    device = torch.device(args.device)
    if args.plan:
        runner = Runner(args, device, {"cuda_device": args.device, "processor": args.device}, args.out / "unused.json")
        print(f"dataset build ~{args.build_estimate:.0f} s, FLOP count ~5 s (before the rows)")
        runner.data["prepared"] = None  # the rows' estimates, as after the build
        print_plan(plan(runner), args.build_estimate + 5 + 10, args.deadline)  # 10 s: imports and start-up
        return 0
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: --device cuda but CUDA is not available (use --device cpu --tiny for the CPU smoke run)",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    own_work = args.work_dir is None
    args.work_dir = Path(tempfile.mkdtemp(prefix="alexnet-gpu-bench-")) if own_work else args.work_dir
    try:
        # Every model and step kind compiles the same step function once: room for all of them.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as torchvision's reference training script sets it
        env = environment(device)
        runner = Runner(args, device, env, args.out / "gpu-pending.json", t0=START)
        runner.path = args.out / f"gpu-{device_slug(runner.device_name, device.type)}-{env['date_utc'][:10]}.json"
        runner.save()
        if "end-to-end" in args.only or "train" in args.only:  # first: its worker processes fork before CUDA and the compilers start threads
            runner.phase("dataset", runner.dataset)
        print(f"{runner.device_name} | {env['cpu_count']} CPUs | torch {torch.__version__} | batch {args.batch} | "
              f"workers {args.workers} | budget {args.time_budget}s per measurement | deadline {args.deadline or '—'}s",
              flush=True)
        runner.phase("flops", lambda: count_flops(runner))
        tasks = plan(runner)
        runner.plan = [{"row": task.label, "estimate_s": round(task.estimate_s)} for task in tasks]
        print_plan(tasks, runner.elapsed(), args.deadline)
        runner.save()
        for task in tasks:
            task.run()
        runner.add_ratios()
        print()
        print(markdown(json.loads(runner.path.read_text())))
        print(f"\nwrote {runner.path} ({runner.elapsed():.0f} s)")
        return 0
    finally:
        if own_work:
            shutil.rmtree(args.work_dir, ignore_errors=True)


def count_flops(runner: Runner) -> None:
    vs = variants()
    for key in ("alexnet", "alexnet-owt", "torchvision"):
        runner.flops[key] = flops.flops_per_image(vs[key].build)
    runner.flops["alexnet-nolrn"] = runner.flops["alexnet-towers"] = runner.flops["alexnet"]
    runner.flops_torch_raw["alexnet"] = flops.flops_per_image(vs["alexnet"].build, fix_groups=False)
    print("FLOPs/img (fwd+bwd): " + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in runner.flops.items()), flush=True)
    runner.save()


if __name__ == "__main__":
    sys.exit(main())
