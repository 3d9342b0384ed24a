"""The rows of the GPU benchmark, each one guarded measurement (:class:`alexnet.perf.guarded.GuardedRun`):

* **model-only**: a random uint8 batch already on the device → the §4.1 augmentation → forward,
  loss, backward, update (:func:`alexnet.perf.steps.make_step`), eager or compiled; the first
  measured step of a model is kept for its end-to-end rows.
* **end-to-end**: that step fed by our :class:`~alexnet.data.loader.BatchLoader` from real-photo
  JPEGs built on the spot (:mod:`alexnet.perf.fixtures`), steady state inside an epoch
  (:func:`alexnet.perf.timing.steady_state`); torchvision's reference recipe on the same JPEGs and on
  ImageNet-sized ones (:mod:`alexnet.perf.reference`).
* **loader-only**: the same loader delivering uint8 batches to the device, no step.
* **train**: ``alexnet train`` itself (:mod:`alexnet.perf.training`).

Each row's estimated seconds (``*_cost``) is what the deadline is checked against; rows with an
img/s get TFLOP/s, MFU and hours for 90 epochs (:func:`alexnet.perf.flops.derived`)."""

from __future__ import annotations

import gc
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from alexnet.data.augment import Augment
from alexnet.data.format import PreparedDataset
from alexnet.data.loader import BatchLoader
from alexnet.models import lrn_fast
from alexnet.perf import fixtures, flops, reference, steps, timing, training
from alexnet.environment import versions
from alexnet.perf.guarded import GuardedRun, error_line
from alexnet.perf.results import device_name


@dataclass(frozen=True)
class Variant:
    """One model build to time."""

    key: str  # unique name of the build
    model: str  # "alexnet", "alexnet-owt", "torchvision alexnet"
    variant: str  # "" or what differs from the model's default
    build: Callable[[], nn.Module]
    ours: bool  # our model + PaperSGD + our registry's input norm; else torchvision + torch SGD
    input_norm: str
    lrn: bool = False  # has the paper's LRN layers (§3.3): the recipe names the LRN path
    end_to_end: bool = False  # its first measured step feeds the end-to-end rows
    flops_as: str = ""  # the key whose FLOP count it shares ("" its own)


@dataclass
class Settings:
    """What the rows are measured with (the benchmark's parsed options)."""

    batch: int
    workers: int
    amp: str
    channels_last: bool
    compile: bool
    compile_backend: str
    time_budget: float
    warmup: int
    rounds: int
    tiny: bool
    images: int
    synthetic_images: int
    imagenet_size_images: int
    build_procs: int
    compile_estimate: float
    build_estimate: float
    work_dir: Path  # where the datasets are built


@dataclass(frozen=True)
class Row:
    """One row of a plan, as data: ``mode`` "model-only" (``key``'s ``step`` kind, with ``options``
    ``augment`` and ``lrn_mode``), "end-to-end" (``key``'s kept step, our loader with ``decode``),
    "reference" (torchvision's recipe with ``key``'s step; on ImageNet-sized JPEGs with
    ``imagenet_size``), "loader-only" or "train" (``decode``)."""

    mode: str
    key: str = ""
    step: str = ""
    decode: str = ""
    options: tuple[tuple[str, Any], ...] = ()
    imagenet_size: bool = False

    @property
    def label(self) -> str:
        if self.mode == "model-only":
            return f"model-only {self.key} {self.step}" + "".join(f" {k}={v}" for k, v in self.options)
        if self.mode == "reference":
            return "end-to-end torchvision reference recipe" + (", ImageNet-sized JPEGs" if self.imagenet_size else "")
        if self.mode == "end-to-end":
            return f"end-to-end {self.key} decode {self.decode}"
        if self.mode == "train":
            return f"train alexnet decode {self.decode}"
        return f"{self.mode} decode {self.decode}"


def lrn_impl(v: Variant, device: torch.device, lrn_mode: str | None) -> str | None:
    """The LRN path ``v``'s step runs ("triton" or "plain"); None for a net without LRN."""
    if not v.ours or not v.lrn:
        return None
    mode = lrn_mode or lrn_fast.mode()
    if mode == "triton" or (mode == "auto" and lrn_fast.HAVE_TRITON and device.type == "cuda"):
        return "triton"
    return "plain"


@dataclass
class Bench:
    """The rows' shared state: the steps kept for the end-to-end rows, the model-only rates, the
    FLOP counts and the datasets, built once."""

    s: Settings
    device: torch.device
    device_name: str
    variants: dict[str, Variant]
    run: GuardedRun
    lrn_pair: tuple[str, str] = ("alexnet", "alexnet-nolrn")  # the paper net with and without LRN
    # The step each model trains with end to end: variant key -> (FastStep, step kind).
    steps: dict[str, tuple[Any, str]] = field(default_factory=dict)
    rates: dict[tuple[str, str], float] = field(default_factory=dict)  # model-only img/s per (key, step kind)
    flops: dict[str, float] = field(default_factory=dict)
    flops_torch_raw: dict[str, float] = field(default_factory=dict)  # FlopCounterMode's own (grouped-conv bug)
    data: dict[str, Any] = field(default_factory=dict)
    compile_s: list[float] = field(default_factory=list)

    @classmethod
    def start(cls, s: Settings, device: torch.device, env: dict[str, Any], variants: dict[str, Variant], path: Path, *,
              config: dict[str, Any], deadline: float, row_timeout: float | None, t0: float) -> "Bench":
        """The rows' state and their guarded run, writing ``path``: every row starts with the
        device, versions, date and git SHA; the file also holds the environment, ``config`` and the
        FLOP counts."""
        name = device_name(env, device)
        common = {"device": name, "device_type": device.type, "host_cpus": env.get("cpu_count"),
                  "versions": versions(env), "date": env.get("date_utc"), "git_sha": env.get("git_sha"),
                  "git_dirty": env.get("git_dirty")}
        run = GuardedRun(path, env, common, deadline=deadline, row_timeout=row_timeout, t0=t0, verbose=s.tiny)
        bench = cls(s, device, name, variants, run)
        run.fields = lambda: {"cpu": env.get("processor"), "environment": env, "config": config,
                              "flops_per_image": bench.flops, "flops_per_image_torch_formula": bench.flops_torch_raw}
        run.cleanup = bench.free  # also the steps no longer needed
        return bench

    def show_plan(self, rows: list[Row], elapsed: float, deadline: float) -> list[dict[str, Any]]:
        """Print ``rows`` with each one's estimate and the running total against the deadline; returns
        the plan as the results file records it."""
        total, out = elapsed, []
        self.run.log(f"plan: {len(rows)} rows; {elapsed:.0f} s elapsed; deadline {deadline:.0f} s" if deadline else
                     f"plan: {len(rows)} rows; {elapsed:.0f} s elapsed; no deadline")
        for i, row in enumerate(rows, 1):
            est = self.estimate(row)
            total += est
            late = "  (past the deadline: skipped unless earlier rows are faster)" if deadline and total > deadline else ""
            self.run.log(f"  {i:2d}. {row.label:60s} ~{est:4.0f} s  (ends ~{total:4.0f} s){late}")
            out.append({"row": row.label, "estimate_s": round(est)})
        return out

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def compile_estimate(self) -> float:
        return 1.3 * max(self.compile_s) if self.compile_s else self.s.compile_estimate

    def _measure(self, what: dict[str, Any], cost_s: float, fn: Callable[[], dict[str, Any]]) -> None:
        def row() -> dict[str, Any]:
            r = fn()
            key = r.pop("_flops_key", None)
            if r.get("img_per_s"):
                r.update(flops.derived(r["img_per_s"], self.flops.get(key or ""), self.device_name if self.cuda else None))
            return r

        self.run.measure(what, cost_s, row)

    def count_flops(self) -> None:
        """FLOPs per image of each build (on the meta device), and torch's own count of the paper net."""
        for key, v in self.variants.items():
            if not v.flops_as:
                self.flops[key] = flops.flops_per_image(v.build)
        for key, v in self.variants.items():
            if v.flops_as:
                self.flops[key] = self.flops[v.flops_as]
        paper = self.lrn_pair[0]
        self.flops_torch_raw[paper] = flops.flops_per_image(self.variants[paper].build, fix_groups=False)
        self.run.log("FLOPs/img (fwd+bwd): " + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in self.flops.items()))
        self.run.save()

    def estimate(self, row: Row) -> float:
        """Seconds ``row`` should take, from the settings and the compile times seen so far."""
        if row.mode == "model-only":
            return self.model_only_cost(row.step)
        if row.mode == "end-to-end":
            return self.end_to_end_cost()
        if row.mode == "reference":
            return self.reference_cost(row.imagenet_size)
        if row.mode == "loader-only":
            return self.loader_only_cost()
        if row.mode == "train":
            return self.train_cost()
        raise ValueError(f"unknown row mode {row.mode!r}")

    def measure(self, row: Row) -> None:
        """Measure ``row`` as one guarded row of the run."""
        if row.mode == "model-only":
            self.model_only(row.key, row.step, **dict(row.options))
        elif row.mode == "end-to-end":
            self.end_to_end(row.key, row.decode)
        elif row.mode == "reference":
            self.reference(row.key, row.imagenet_size)
        elif row.mode == "loader-only":
            self.loader_only(row.decode)
        elif row.mode == "train":
            self.train(row.decode)
        else:
            raise ValueError(f"unknown row mode {row.mode!r}")

    # -- steps ---------------------------------------------------------------------------------------

    def recipe(self, v: Variant, step: Any, augment: bool = True, lrn_mode: str | None = None) -> dict[str, Any]:
        s = self.s
        return {"amp": s.amp, "channels_last": s.channels_last, "compile": step.compiled,
                "compile_backend": s.compile_backend if step.compiled else None, "cuda_graphs": step.cuda_graphs,
                "lr": steps.LR, "optimizer": steps.optimizer_label(step),
                "augment": "§4.1 on the device (crop, flip, PCA noise, mean)" if augment else "none (random float input)",
                "input_norm": v.input_norm if augment else None, "lrn": lrn_impl(v, self.device, lrn_mode),
                "cudnn_benchmark": torch.backends.cudnn.benchmark if self.cuda else None}

    def make_step(self, v: Variant, kind: str, stats: dict[str, torch.Tensor] | None) -> Any:
        """A FastStep for ``v`` ("eager", "compile", "compile+cudagraphs")."""
        torch.manual_seed(0)
        return steps.make_step(v.build(), self.device, ours=v.ours, stats=stats, input_norm=v.input_norm,
                               amp=self.s.amp, channels_last=self.s.channels_last, compile=kind != "eager",
                               cuda_graphs=kind == "compile+cudagraphs", compile_backend=self.s.compile_backend)

    def model_only_cost(self, kind: str) -> float:
        return self.s.time_budget + 10 + (self.compile_estimate() if kind != "eager" else 0)

    def model_only(self, key: str, kind: str, *, augment: bool = True, lrn_mode: str | None = None) -> None:
        v = self.variants[key]
        variant = v.variant + ("" if augment else ("; " if v.variant else "") + "no augmentation (random float input)")
        if lrn_mode:
            variant = (variant + "; " if variant else "") + f"ALEXNET_LRN={lrn_mode}"
        what = {"mode": "model-only", "model": v.model, "variant": variant, "step": kind, "batch": self.s.batch}
        self._measure(what, self.model_only_cost(kind), lambda: self._model_only(v, kind, variant, augment, lrn_mode))

    def _model_only(self, v: Variant, kind: str, variant: str, augment: bool, lrn_mode: str | None) -> dict[str, Any]:
        s, b = self.s, self.s.batch
        u8, labels, indices = steps.random_batch(b, 256, 1000, self.device)
        xf = None
        if not augment:
            gen = torch.Generator(device="cpu").manual_seed(1)
            fmt = torch.channels_last if s.channels_last else torch.contiguous_format
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
            tm = timing.time_steps(one, self.device, s.time_budget, s.warmup, rounds=s.rounds,
                                   min_steps=1 if s.tiny else 2)
            final_loss = float(loss)
        rate = b / tm["s_per_step"]
        row: dict[str, Any] = {"img_per_s": round(rate, 1), "ms_per_step": round(tm["s_per_step"] * 1e3, 3),
                               "first_step_s": round(first_s, 1), "workers": 0,
                               "recipe": self.recipe(v, step, augment, lrn_mode), "timing": tm,
                               "loss_first_step": round(final_loss, 4), "_flops_key": v.key}
        if augment and not lrn_mode:
            self.rates[(v.key, kind)] = rate
            if v.end_to_end and v.key not in self.steps:
                self.steps[v.key] = (step, kind)  # the first measured: the headline kind (see the plan)
        self.lrn_share(row, v.key, kind, variant)
        share = f"  LRN share {row['lrn_share']:.1%}" if row.get("lrn_share") is not None else ""
        self.run.log(f"model-only  {v.model:20s} {variant[:28]:28s} {kind:18s} {rate:10.1f} img/s  "
                     f"{tm['s_per_step'] * 1e3:8.2f} ms/step  first step {first_s:6.1f}s{share}")
        del step
        return row

    def lrn_share(self, row: dict[str, Any], key: str, kind: str, variant: str) -> None:
        """LRN's share of the step (:func:`alexnet.perf.steps.lrn_share`) in the same step kind, on
        whichever of the pair is measured second, and on the other row of the pair."""
        paper, none = self.lrn_pair
        if key not in self.lrn_pair or variant not in (self.variants[paper].variant, self.variants[none].variant):
            return
        if (paper, kind) not in self.rates or (none, kind) not in self.rates:
            return
        share = steps.lrn_share(1 / self.rates[(paper, kind)], 1 / self.rates[(none, kind)])  # t ∝ 1/rate
        row["lrn_share"] = share
        labels = (self.variants[paper].variant, self.variants[none].variant)
        for r in self.run.rows:
            if r.get("mode") == "model-only" and r.get("model") == self.variants[paper].model \
                    and r.get("variant") in labels and r.get("step") == kind:
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
                self.data["error"] = error_line(e)
                raise
        return self.data["prepared"]

    def _build_dataset(self) -> None:
        s = self.s
        kind = "photos" if fixtures.photos_available() else "synthetic"
        n = s.images if kind == "photos" else min(s.images, s.synthetic_images)
        t = time.perf_counter()
        # A validation split for the train rows: whole batches (a last partial one would compile
        # evaluation twice), about ImageNet's 50k : 1.28M.
        n_val = s.batch * max(2, n // 25 // s.batch)
        # 1000 classes, as the model-only rows' networks: the train rows' compiled graph is theirs
        # (Inductor's cache serves it).
        root = fixtures.make_photo_dataset(s.work_dir / "photos", n, n_val=n_val, kind=kind, procs=s.build_procs,
                                           classes=1000)
        ds = PreparedDataset(root, "train")
        t_build = time.perf_counter() - t
        folder = fixtures.write_image_folder(ds, s.work_dir / "imagefolder")
        self.data.update(prepared=ds, root=root, n_val=n_val, folder=folder, kind=kind,
                         build_s=round(time.perf_counter() - t, 1), build_prepared_s=round(t_build, 1), n=len(ds),
                         mean_jpeg_kb=round(float(ds.index[:, 1].mean()) / 1024, 1))
        self.run.log(f"data  {len(ds)} {'real-photo' if kind == 'photos' else 'SYNTHETIC (no scikit-image)'} 256×256 "
                     f"JPEGs q90, {self.data['mean_jpeg_kb']} KB each, built in {self.data['build_s']} s")

    def data_fields(self) -> dict[str, Any]:
        d = self.data
        return {"photos": d["kind"] == "photos", "images": d["n"], "image_size": "256×256 JPEG q90",
                "mean_jpeg_kb": d["mean_jpeg_kb"], "dataset_build_s": d["build_s"]}

    def data_cost(self) -> float:
        return 0 if "prepared" in self.data else self.s.build_estimate

    def run_loader(self, decode: str, consume: Callable[[Any, int], int]) -> tuple[dict[str, Any], BatchLoader]:
        """Steady-state throughput of our loader feeding ``consume``; the loader is closed after."""
        ds = self.dataset()
        loader = BatchLoader(ds, self.s.batch, shuffle=True, seed=0, workers=self.s.workers, pin_memory=self.cuda,
                             decode=decode, device=self.device if self.cuda else None)
        try:
            def make_iter(epoch: int) -> Iterator[Any]:
                loader.set_epoch(epoch)
                return loader.iterate()

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchvision's decode_jpeg deprecation notices
                res = timing.steady_state(make_iter, consume, loader.workers * loader.prefetch + 1,
                                          self.s.time_budget, len(loader), self.device)
        finally:
            loader.close()
        return res, loader

    def end_to_end_cost(self) -> float:
        return self.s.time_budget + 15 + self.data_cost()

    def end_to_end(self, key: str, decode: str) -> None:
        v = self.variants[key]
        what = {"mode": "end-to-end", "model": v.model, "variant": v.variant, "loader": "alexnet BatchLoader",
                "decode": decode, "batch": self.s.batch, "workers": self.s.workers}
        self._measure(what, self.end_to_end_cost(), lambda: self._end_to_end(v, decode))

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
        self.run.log(f"end-to-end  {v.model:20s} decode {decode:5s} {kind:18s} {res['img_per_s']:10.1f} img/s  "
                     f"(with epoch restarts {res['img_per_s_with_restarts']:.1f}; model-only "
                     f"{self.rates[(v.key, kind)]:.1f})")
        return {**res, "gpu_fraction": loader.gpu_fraction, "loader_workers": loader.workers, **self.data_fields(),
                "step": kind, "recipe": self.recipe(v, step), "model_only_img_per_s": round(self.rates[(v.key, kind)], 1),
                "final_loss": float(last[0]) if last[0] is not None else None, "_flops_key": v.key}

    def loader_only_cost(self) -> float:
        return self.s.time_budget + 10 + self.data_cost()

    def loader_only(self, decode: str) -> None:
        what = {"mode": "loader-only", "model": None, "variant": "uint8 batches to the device, no step",
                "loader": "alexnet BatchLoader", "decode": decode, "batch": self.s.batch, "workers": self.s.workers}
        self._measure(what, self.loader_only_cost(), lambda: self._loader_only(decode))

    def _loader_only(self, decode: str) -> dict[str, Any]:
        def consume(b: Any, epoch: int) -> int:
            b.images.to(self.device, non_blocking=True)
            return len(b.labels)

        res, loader = self.run_loader(decode, consume)
        self.run.log(f"loader-only decode {decode:5s} {res['img_per_s']:10.1f} img/s")
        return {**res, "gpu_fraction": loader.gpu_fraction, **self.data_fields()}

    def reference_cost(self, imagenet_size: bool) -> float:
        return self.s.time_budget + 15 + self.data_cost() + (0.75 * self.s.build_estimate if imagenet_size else 0)

    def reference(self, key: str, imagenet_size: bool) -> None:
        """torchvision's reference recipe end to end: ImageFolder + PIL transforms in a DataLoader,
        the step of ``key`` (torchvision's AlexNet, eager) in the same precision and layout as ours."""
        what = {"mode": "end-to-end", "model": self.variants[key].model,
                "variant": "reference recipe" + (", ImageNet-sized JPEGs" if imagenet_size else ""),
                "loader": "torch DataLoader + ImageFolder (PIL)", "decode": "cpu", "batch": self.s.batch,
                "workers": self.s.workers}
        self._measure(what, self.reference_cost(imagenet_size), lambda: self._reference(key, imagenet_size))

    def _reference(self, key: str, imagenet_size: bool) -> dict[str, Any]:
        s = self.s
        if key not in self.steps:
            raise RuntimeError("torchvision's eager model-only step was not measured")
        step = self.steps[key][0]
        self.dataset()  # for the photo kind, and the image folder of the same JPEGs
        if imagenet_size:
            if "folder_imagenet" not in self.data:
                t = time.perf_counter()
                self.data["folder_imagenet"] = fixtures.make_image_folder(
                    s.work_dir / "imagenet-size", s.imagenet_size_images, (375, 500), kind=self.data["kind"], seed=1,
                    procs=s.build_procs)
                self.data["imagenet_build_s"] = round(time.perf_counter() - t, 1)
            folder = self.data["folder_imagenet"]
        else:
            folder = self.data["folder"]
        ds = reference.reference_dataset(folder)
        step.augment = None  # the recipe's own transforms made the input

        def consume(b: Any, epoch: int) -> int:
            x, y = b
            step(x, y, torch.arange(len(y)), epoch)
            return len(y)

        res = timing.steady_state(lambda e: reference.reference_epoch(ds, e, s.batch, s.workers, self.cuda), consume,
                                  max(1, s.workers) * reference.PREFETCH + 1, s.time_budget, len(ds) // s.batch,
                                  self.device)
        sizes = [p.stat().st_size for p in list(Path(folder).glob("class0/*.jpg"))[:200]]
        v = self.variants[key]
        row = {**res, **self.data_fields(), "step": "eager",
               "recipe": {**self.recipe(v, step, augment=False), "augment": reference.RECIPE},
               "model_only_img_per_s": round(self.rates.get((key, "eager"), float("nan")), 1), "_flops_key": key}
        if imagenet_size:
            row.update(images=len(ds), image_size="500×375 JPEG q90", dataset_build_s=self.data.get("imagenet_build_s"))
        row["mean_jpeg_kb"] = round(float(np.mean(sizes)) / 1024, 1) if sizes else None
        self.run.log(f"end-to-end  {'torchvision reference':20s} {'ImageNet-sized' if imagenet_size else '256×256':14s} "
                     f"{res['img_per_s']:10.1f} img/s")
        return row

    def train_cost(self) -> float:
        s = self.s
        return 2 * s.time_budget + 20 + self.data_cost() + (self.compile_estimate() if self.cuda and s.compile else 0)

    def train(self, decode: str) -> None:
        """``alexnet train`` itself (the engine's ``run()``): the paper's recipe with this run's
        speed switches, a warm-up epoch and a timed one on the same JPEGs, with the run's loader,
        logging, checkpoints (one mid-epoch, one at each epoch end) and evaluation."""
        what = {"mode": "train", "model": "alexnet", "variant": "alexnet train (engine run(), paper recipe)",
                "loader": "alexnet BatchLoader", "decode": decode, "batch": self.s.batch, "workers": self.s.workers}
        self._measure(what, self.train_cost(), lambda: self._train(decode))

    def _train(self, decode: str) -> dict[str, Any]:
        s = self.s
        self.dataset()
        steps_per_epoch = 3 if s.tiny else self.data["n"] // s.batch  # tiny: the code path, in seconds
        # On the CPU, Inductor would compile for minutes: the train rows there run eager (the
        # fast recipe's "auto" does the same).
        compile = s.compile and self.cuda
        cfg = training.train_config(self.data["root"], device=str(self.device), batch=s.batch, workers=s.workers,
                                    decode=decode, amp=s.amp, channels_last=s.channels_last, compile=compile,
                                    save_every=max(1, steps_per_epoch // 2), max_steps_per_epoch=3 if s.tiny else 0)
        out = s.work_dir / f"train-{decode}"
        shutil.rmtree(out, ignore_errors=True)

        def log(line: str) -> None:
            if s.tiny or line.startswith(("epoch", "warning")):
                self.run.log(f"      train | {line}")

        try:
            res = training.timed_run(cfg, out, log=log, count_syncs=self.cuda)
        finally:
            shutil.rmtree(out, ignore_errors=True)  # ~0.5 GB per checkpoint
        self.run.log(f"train       {'alexnet':20s} decode {decode:5s} {'compile' if compile else 'eager':18s} "
                     f"{res['img_per_s']:10.1f} img/s  (epoch with evaluation and checkpoints: "
                     f"{res['img_per_s_epoch_wall']:.1f}; first epoch {res['first_epoch_s']:.0f} s)")
        recipe = {"recipe": "paper", "amp": cfg.amp, "channels_last": cfg.channels_last, "compile": cfg.compile,
                  "optimizer": "PaperSGD §5 (" + ("fused per parameter, compiled" if cfg.compile else "foreach") + ")",
                  "lr": cfg.lr, "schedule": cfg.schedule, "augment": "§4.1 on the device (crop, flip, PCA noise, mean)",
                  "eval": "centre crop, every epoch", "save_every": cfg.save_every, "keep_checkpoints": cfg.keep_checkpoints,
                  "cudnn_benchmark": torch.backends.cudnn.benchmark if self.cuda else None}
        return {**res, **self.data_fields(), "step": "compile" if compile else "eager", "recipe": recipe,
                "_flops_key": "alexnet"}

    def add_ratios(self) -> None:
        """Each end-to-end and train row of ours: how many times the reference recipe on the same JPEGs."""
        rows = self.run.rows
        ref = next((r for r in rows if r.get("variant") == "reference recipe" and r.get("img_per_s")), None)
        ref_in = next((r for r in rows if r.get("variant") == "reference recipe, ImageNet-sized JPEGs"
                       and r.get("img_per_s")), None)
        for r in rows:
            if r.get("mode") in ("end-to-end", "train") and r.get("loader") == "alexnet BatchLoader" and r.get("img_per_s"):
                if ref:
                    r["x_reference"] = round(r["img_per_s"] / ref["img_per_s"], 2)
                if ref_in:
                    r["x_reference_imagenet_size"] = round(r["img_per_s"] / ref_in["img_per_s"], 2)
        self.run.save()


__all__ = ["Bench", "Row", "Settings", "Variant", "lrn_impl"]
