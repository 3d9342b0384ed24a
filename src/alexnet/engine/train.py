"""The training loop: small functions that return their metrics; :func:`run` wires them."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from alexnet import models
from alexnet.config import TrainConfig, save_yaml
from alexnet.data.augment import Augment
from alexnet.data.format import PreparedDataset
from alexnet.data.loader import BatchLoader
from alexnet.data.resolve import open_splits, resolve_data
from alexnet.engine import checkpoint as ckpt
from alexnet.engine import distributed
from alexnet.engine.evaluate import Precision, evaluate, topk_correct
from alexnet.engine.optim import Schedule, build_optimizer, set_lr
from alexnet.errors import UserError

METRICS = "metrics.jsonl"


class TrainingDiverged(UserError):
    """A non-finite loss: the run stops; the last good checkpoint stays intact."""


class Interrupted(Exception):
    """SIGTERM/SIGINT: a checkpoint was written; ``exit_code`` is 143 or 130."""

    def __init__(self, exit_code: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted (exit {exit_code})")
        self.exit_code = exit_code
        self.checkpoint = checkpoint


@dataclass
class RunState:
    """Where the run is; saved in every checkpoint."""

    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of that epoch already trained
    step: int = 0  # optimizer steps so far
    elapsed_s: float = 0.0  # training wall time before this process
    stall_count: int = 0


@dataclass
class Context:
    cfg: TrainConfig
    out: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    augment: Augment
    train_loader: BatchLoader
    val_ds: PreparedDataset
    train_ds: PreparedDataset
    prec: Precision
    dist: distributed.DistInfo
    meta: dict[str, Any]
    log: Callable[[str], None] = print
    scaler: Any = None
    tb: Any = None
    stop_signal: list[int] = field(default_factory=list)
    t_start: float = field(default_factory=time.time)


# -- set-up --------------------------------------------------------------------------------------


def pick_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UserError(f"device {spec!r} is not valid; accepted: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {spec!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def build_model(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    try:
        model = models.create(cfg.model, num_classes, **cfg.model_options)
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def model_meta(cfg: TrainConfig, ds: PreparedDataset) -> dict[str, Any]:
    """What a weights file needs to rebuild and use its model (stored in safetensors metadata)."""
    mi = models.info(cfg.model)
    return {"model": cfg.model, "model_options": cfg.model_options, "num_classes": ds.num_classes,
            "classes": ds.classes, "class_names": ds.class_names, "input_size": mi.input_size,
            "input_norm": mi.input_norm, "data": cfg.data, "image_size": list(ds.image_size)}


def make_augment(cfg: TrainConfig, ds: PreparedDataset, input_norm: str) -> Augment:
    return Augment.from_stats(ds.stats(), models.info(cfg.model).input_size, random_crop=cfg.random_crop, flip=cfg.flip,
                              pca_std=cfg.pca_std, crop_padding=cfg.crop_padding, input_norm=input_norm, seed=cfg.seed)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    st = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


# -- checkpoints -----------------------------------------------------------------------------------


def checkpoint_state(ctx: Context, state: RunState) -> dict[str, Any]:
    return {
        "model": ckpt.unwrap(ctx.model).state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "schedule": ctx.schedule.state_dict(),
        "run": {**state.__dict__, "elapsed_s": state.elapsed_s + (time.time() - ctx.t_start)},
        "rng": rng_state(ctx.prec.device),
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else {},
        "config": ctx.cfg.to_dict(),
        "meta": json.dumps(ctx.meta),
    }


def write_checkpoint(ctx: Context, state: RunState) -> Path | None:
    if not ctx.dist.is_main:
        return None
    return ckpt.save_checkpoint(ctx.out, checkpoint_state(ctx, state), state.step, keep=ctx.cfg.keep_checkpoints)


def restore(ctx: Context, path: Path) -> RunState:
    d = ckpt.load_checkpoint(path, map_location="cpu")
    try:
        ckpt.unwrap(ctx.model).load_state_dict(d["model"])
        ctx.optimizer.load_state_dict(d["optimizer"])
        ctx.schedule.load_state_dict(d["schedule"])
        if ctx.scaler is not None and d.get("scaler"):
            ctx.scaler.load_state_dict(d["scaler"])
        set_rng_state(d["rng"], ctx.prec.device)
        state = RunState(**d["run"])
    except (KeyError, RuntimeError, TypeError) as e:
        raise UserError(f"{path}: does not match this run's model or config ({str(e).splitlines()[0][:200]})") from None
    return state


# -- logging -------------------------------------------------------------------------------------


def read_metrics(out: Path) -> list[dict[str, Any]]:
    p = out / METRICS
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def append_metrics(ctx: Context, row: dict[str, Any]) -> None:
    if not ctx.dist.is_main:
        return
    with open(ctx.out / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")
    if ctx.tb is not None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch":
                ctx.tb.add_scalar(k, v, row["epoch"])
        ctx.tb.flush()


def truncate_metrics(out: Path, epochs_done: int) -> None:
    """On resume, keep only the rows of epochs that finished before the checkpoint."""
    rows = [r for r in read_metrics(out) if r["epoch"] <= epochs_done]
    (out / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))


# -- signals ---------------------------------------------------------------------------------------


@contextmanager
def stop_on_signals(ctx: Context) -> Iterator[None]:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and stops."""
    import threading

    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if ctx.stop_signal:  # a second signal: stop now
            raise KeyboardInterrupt
        ctx.stop_signal.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- the loop --------------------------------------------------------------------------------------


def train_step(ctx: Context, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; returns the loss and the number of top-1 hits (device tensors)."""
    dev = ctx.prec.device
    x = ctx.augment.train(images.to(dev, non_blocking=True), indices, epoch)
    x = ctx.prec.prepare_input(x)
    y = labels.to(dev, non_blocking=True)
    with ctx.prec.autocast():
        logits = ctx.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=ctx.cfg.label_smoothing)
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        loss.backward()
        ctx.optimizer.step()
    hits = (logits.detach().argmax(1) == y).sum()
    return loss.detach(), hits


def check_loss(ctx: Context, state: RunState, loss: float) -> None:
    """Stop on a non-finite loss; warn when the loss sits at chance (ln C) for long."""
    if not math.isfinite(loss):
        last = ckpt.latest_checkpoint(ctx.out)
        where = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"loss is {loss} at step {state.step} (epoch {state.epoch + 1}); training diverged — "
            f"lower the learning rate (now {ctx.optimizer.param_groups[0]['lr']:g}); {where}"
        )
    if ctx.cfg.stall_steps > 0:
        chance = math.log(ctx.train_ds.num_classes)
        state.stall_count = state.stall_count + 1 if abs(loss - chance) < 0.02 * chance else 0
        if state.stall_count == ctx.cfg.stall_steps:
            ctx.log(f"warning: the loss has stayed at chance level (ln {ctx.train_ds.num_classes} = {chance:.3f}) for "
                    f"{ctx.cfg.stall_steps} steps; the paper's bias-1 initialisation is known to stall in some "
                    f"setups (try --set model_options.bias_init=0.1 or a lower --lr)")


def train_one_epoch(ctx: Context, state: RunState) -> dict[str, float]:
    """Train the rest of epoch ``state.epoch``; returns its loss, error and throughput."""
    cfg, loader = ctx.cfg, ctx.train_loader
    ctx.model.train()
    loader.set_epoch(state.epoch)
    n_batches = len(loader)
    sums = torch.zeros(3, dtype=torch.float64)  # images, loss sum, hits
    t0 = time.time()
    bar = tqdm(total=n_batches, initial=state.batch_in_epoch, desc=f"epoch {state.epoch + 1}/{cfg.epochs}", unit="batch",
               leave=False, disable=not (cfg.progress and ctx.dist.is_main), dynamic_ncols=True, file=sys.stdout)
    check_every = 1 if ctx.prec.device.type == "cpu" else 20
    pending: list[torch.Tensor] = []
    for b in loader.iterate(start_batch=state.batch_in_epoch):
        set_lr(ctx.optimizer, ctx.schedule.lr_at(state.step))
        loss, hits = train_step(ctx, b.images, b.labels, b.indices, state.epoch)
        n = len(b.labels)
        pending.append(torch.stack([torch.tensor(float(n), device=loss.device), loss * n, hits.double()]))
        state.step += 1
        state.batch_in_epoch += 1
        if len(pending) >= check_every or ctx.stop_signal or (cfg.save_every and state.step % cfg.save_every == 0):
            block = torch.stack(pending).double().cpu()  # one device sync per block of steps
            pending.clear()
            for row in block:
                check_loss(ctx, state, float(row[1] / row[0]))
            sums += block.sum(0)
            bar.set_postfix(loss=f"{float(block[-1, 1] / block[-1, 0]):.3f}", lr=f"{ctx.optimizer.param_groups[0]['lr']:.2g}")
        bar.update(1)
        if cfg.save_every and state.step % cfg.save_every == 0 and state.batch_in_epoch < n_batches:
            write_checkpoint(ctx, state)
        if ctx.stop_signal:
            break
    if pending:
        block = torch.stack(pending).double().cpu()
        for row in block:
            check_loss(ctx, state, float(row[1] / row[0]))
        sums += block.sum(0)
    bar.close()
    if ctx.dist.enabled:
        sums = distributed.all_reduce_sum(sums.to(ctx.prec.device)).cpu()
    dt = time.time() - t0
    n = max(1.0, float(sums[0]))
    return {"train_loss": float(sums[1]) / n, "train_top1_err": 1 - float(sums[2]) / n,
            "img_per_s": float(sums[0]) / max(dt, 1e-9), "train_images": int(sums[0]), "epoch_time_s": dt}


def validate(ctx: Context, ten_crop: bool) -> dict[str, float]:
    r = evaluate(ctx.model, ctx.val_ds, ctx.augment, ctx.prec, batch_size=ctx.cfg.eval_batch_size or ctx.cfg.batch_size,
                 ten_crop=ten_crop, workers=ctx.cfg.workers, rank=ctx.dist.rank, world_size=ctx.dist.world_size)
    return {"val_top1_err": float(r["top1_err"]), "val_top5_err": float(r["top5_err"]), "val_loss": float(r["loss"])}  # type: ignore[arg-type]


def setup(cfg: TrainConfig, out: Path, *, log: Callable[[str], None] = print) -> Context:
    dist_info = distributed.from_env()
    device = pick_device(cfg.device, dist_info.local_rank)
    distributed.init(dist_info, device)
    torch.manual_seed(cfg.seed)
    if cfg.model not in models.names():
        raise UserError(f"unknown model {cfg.model!r}; accepted: {', '.join(models.names())}")
    mi = models.info(cfg.model)
    root = resolve_data(cfg.data, mi.input_size, seed=0)
    train_ds, val_ds = open_splits(root)
    model = build_model(cfg, train_ds.num_classes, device)
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    optimizer = build_optimizer(cfg, model)
    loader = BatchLoader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed, workers=cfg.workers, rank=dist_info.rank,
                         world_size=dist_info.world_size, pin_memory=device.type == "cuda",
                         limit_batches=cfg.max_steps_per_epoch, subset=cfg.train_subset)
    if len(loader) == 0:
        raise UserError(f"{root}: {loader.n} training images make no full batch of {cfg.batch_size}; lower --batch-size")
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    ctx = Context(cfg=cfg, out=out, model=model, optimizer=optimizer, schedule=Schedule(cfg, len(loader)),
                  augment=make_augment(cfg, train_ds, mi.input_norm), train_loader=loader, val_ds=val_ds, train_ds=train_ds,
                  prec=Precision(device, cfg.amp, cfg.channels_last), dist=dist_info, meta=model_meta(cfg, train_ds),
                  log=log if dist_info.is_main else (lambda s: None), scaler=scaler)
    if cfg.tensorboard and dist_info.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            ctx.tb = SummaryWriter(str(out / "tb"))
        except ImportError:
            log("tensorboard is not installed: pip install 'alexnet[tensorboard]'; logging to metrics.jsonl only")
    return ctx


def run(cfg: TrainConfig, out: str | Path, *, resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg`` into the run folder ``out``; returns the summary (also written to summary.json)."""
    out = Path(out)
    if not resume and (out / METRICS).exists():
        raise UserError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    ctx = setup(cfg, out, log=log)
    state = RunState()
    if resume:
        last = ckpt.latest_checkpoint(out)
        if last is None:
            log(f"no checkpoint in {out}; starting from the beginning")
        else:
            state = restore(ctx, last)
            if ctx.dist.is_main:
                truncate_metrics(out, state.epoch)
            log(f"resumed from {last} (epoch {state.epoch + 1}, batch {state.batch_in_epoch}, step {state.step})")
    if ctx.dist.is_main:
        save_yaml(cfg, out / "config.yaml")
        from alexnet.report.markdown import environment

        (out / "environment.json").write_text(json.dumps(environment(), indent=1) + "\n")
    n_params = sum(p.numel() for p in ctx.model.parameters())
    log(f"training {cfg.model} ({n_params:,} parameters) on {cfg.data}: {len(ctx.train_ds):,} train / {len(ctx.val_ds):,} val "
        f"images, {ctx.train_ds.num_classes} classes, {cfg.epochs} epochs of {len(ctx.train_loader)} batches of "
        f"{cfg.batch_size}, recipe {cfg.recipe}, device {ctx.prec.device}")
    ctx.t_start = time.time()
    elapsed0 = state.elapsed_s
    row: dict[str, Any] = {}
    with stop_on_signals(ctx):
        while state.epoch < cfg.epochs:
            lr = ctx.schedule.lr_at(state.step)
            tr = train_one_epoch(ctx, state)
            if ctx.stop_signal:
                path = write_checkpoint(ctx, state)
                raise Interrupted(143 if ctx.stop_signal[0] == signal.SIGTERM else 130, path)
            val = validate(ctx, cfg.ten_crop) if (state.epoch + 1) % cfg.eval_every == 0 or state.epoch + 1 == cfg.epochs else {}
            dropped = ctx.schedule.end_of_epoch(val.get("val_top1_err"))
            row = {"epoch": state.epoch + 1, "lr": lr, **tr, **val, "step": state.step,
                   "time_s": elapsed0 + time.time() - ctx.t_start}
            append_metrics(ctx, row)
            log(f"epoch {state.epoch + 1:3d}/{cfg.epochs}  loss {tr['train_loss']:.3f}  train err {tr['train_top1_err']:.3f}"
                + (f"  val top-1 {val['val_top1_err']:.3f}  top-5 {val['val_top5_err']:.3f}" if val else "")
                + f"  lr {lr:.2g}  {tr['img_per_s']:.0f} img/s" + ("  (lr / 10)" if dropped else ""))
            state.epoch += 1
            state.batch_in_epoch = 0
            write_checkpoint(ctx, state)
    if ctx.dist.is_main:
        ckpt.save_weights(ctx.model, out / ckpt.WEIGHTS, ctx.meta)
    summary = {"epochs": cfg.epochs, "steps": state.step, "final": row, "time_s": elapsed0 + time.time() - ctx.t_start,
               "weights": str(out / ckpt.WEIGHTS)}
    if ctx.dist.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if ctx.tb is not None:
        ctx.tb.close()
    return summary
