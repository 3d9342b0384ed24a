"""The training loop: small functions that return their metrics; :func:`run` wires them.

Its state comes in three parts, each passed explicitly: a frozen :class:`Context` (what the run is
made of: config, networks, optimizer, data, the step ``step_fn``), built once by :func:`setup`; a
mutable :class:`~alexnet.engine.resume.RunState` (where the run is), saved in every checkpoint by
the :class:`~alexnet.engine.resume.Checkpointer`; and this process's
:class:`~alexnet.signals.StopRequest` (what a signal asked for). The run folder's files are read
and written by :mod:`alexnet.engine.run_folder`, the resume protocol is :mod:`alexnet.engine.resume`,
and the decisions every process must share are :mod:`alexnet.engine.distributed`'s.

Runs you can trust:

* **Exact resume.** A run killed at any moment and resumed with ``--resume`` ends with the same
  weights, bit for bit on the CPU, as one that was never stopped (:mod:`alexnet.engine.resume`).
* **Clean stops.** SIGTERM/SIGINT (and a scheduler's SIGUSR1 warning) ask for a stop: the current step finishes, a checkpoint is
  written, and :class:`Interrupted` (exit 143/130) carries its path. A single-process evaluation
  in progress is abandoned (it is redone on resume). A second signal stops at once.
* **Divergence.** A non-finite loss (or non-finite weights at a checkpoint) stops the run with
  :class:`~alexnet.engine.resume.TrainingDiverged` naming the step, the loss and the last good
  checkpoint, which is never overwritten by bad weights. ``stall_steps`` warns when the loss sits
  at chance level.
* **torchrun.** Each process trains on its slice of every global batch; DDP averages the
  gradients of the per-process mean losses, which equals the mean over the global batch since the
  slices have equal size. Decisions that must agree (a signal, a non-finite loss) are all-reduced
  at fixed steps; rank 0 writes logs and checkpoints and tells the others how it went. Every
  process must have rank 0's config (:func:`~alexnet.engine.distributed.check_same_config`), and
  workers restarted by ``torchrun --max-restarts`` resume by themselves. With ``parallel=owt``
  (:mod:`alexnet.engine.owt`) DDP covers the conv layers only and the FC layers are split over
  the processes; the step and the loop are the same.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from alexnet import models, signals
from alexnet.config import NOT_IN_RECIPE, TrainConfig
from alexnet.data.augment import Augment
from alexnet.data.format import PreparedDataset
from alexnet.data.loader import BatchLoader
from alexnet.data.resolve import open_splits, resolve_data
from alexnet.data.stream import make_loader
from alexnet.engine import checkpoint as ckpt
from alexnet.engine import distributed, owt, run_folder
from alexnet.engine.checks import check_against_data, describe_augmentation, effective_crop_padding
from alexnet.engine.device import keep_freed_cpu_memory, pick_device
from alexnet.engine.evaluate import Precision, evaluate, selection_half
from alexnet.engine.fast_step import FastStep
from alexnet.engine.model_parallel import ModelParallelAlexNet, model_parallel_devices
from alexnet.engine.optim import Schedule, build_optimizer, set_lr
from alexnet.engine.resume import Checkpointer, EpochSums, RunState, TrainingDiverged, diverged, finished, resumed_state
from alexnet.errors import UserError
from alexnet.files import lock_folder
from alexnet.progress import Progress

__all__ = ["Context", "Interrupted", "TrainingDiverged", "run", "setup", "train_one_epoch", "validate"]


class Interrupted(Exception):
    """SIGTERM/SIGINT/SIGUSR1: a checkpoint was written; ``exit_code`` is 143 or 130, ``signal`` the
    name of the signal that asked for the stop."""

    def __init__(self, exit_code: int, checkpoint: Path | None, signal: str = "SIGTERM") -> None:
        super().__init__(f"interrupted (exit {exit_code})")
        self.exit_code = exit_code
        self.checkpoint = checkpoint
        self.signal = signal


@dataclass(frozen=True)
class Context:
    """What a run is made of, built once by :func:`setup`: its config, folder, networks, optimizer,
    data and step. Nothing here changes while it trains (only ``tb`` is set, by :func:`run`)."""

    cfg: TrainConfig
    out: Path
    model: nn.Module  # what trains: maybe DDP- and compile-wrapped
    eval_model: nn.Module  # what evaluates: never DDP-wrapped (no collectives in its forward)
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    augment: Augment
    train_loader: BatchLoader
    val_ds: PreparedDataset
    train_ds: PreparedDataset
    prec: Precision
    step_fn: FastStep  # one optimizer step: augmentation, forward, loss, backward, update
    dist: distributed.DistInfo
    meta: dict[str, Any]
    devices: list[torch.device] = field(default_factory=list)  # every device the model occupies
    log: Callable[[str], None] = print
    scaler: Any = None
    tb: Any = None  # a TensorBoard SummaryWriter (rank 0, with tensorboard=True)
    tb_steps: run_folder.StepScalars | None = None  # per-step scalars (rank 0, with tensorboard=True and tensorboard_every > 0)


# -- set-up --------------------------------------------------------------------------------------


def setup(cfg: TrainConfig, out: Path, *, log: Callable[[str], None] = print) -> Context:
    dist_info = distributed.from_env()
    device = pick_device(cfg.device, dist_info.local_rank)
    if device.type == "cpu":
        keep_freed_cpu_memory()  # eager CPU steps would otherwise page-fault on every activation
    models.check_name(cfg.model)
    if cfg.model_parallel == 2 and cfg.model != "alexnet":
        raise UserError(f"model_parallel=2 does not apply to model {cfg.model!r}: it splits the two towers of the "
                        f"paper's network (§3.2); accepted: model alexnet")
    check_parallel(cfg, dist_info)
    mi = models.info(cfg.model)
    root = resolve_data(cfg.data, mi.input_size, seed=0, stream=True)
    train_ds, val_ds = open_splits(root)
    stats = train_ds.stats()
    try:  # settings this data cannot honour: refused here, before any work, on every rank alike
        warnings = check_against_data(cfg, image_size=train_ds.image_size, input_size=mi.input_size,
                                      eigval=stats.get("eigval"), train_images=len(train_ds))
    except UserError as e:
        raise UserError(f"{root}: {e}") from None
    if cfg.parallel == "owt" and not dist_info.enabled:
        warnings.append("parallel=owt has no effect in a single process (it splits the FC layers between torchrun "
                        "processes); training as one process")
    if dist_info.is_main:
        for warning in warnings:
            log(f"warning: {warning}")
    distributed.init(dist_info, device)
    distributed.check_same_config(cfg)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    model = build_model(cfg, train_ds.num_classes, device)
    devices = [device]
    if cfg.model_parallel == 2:
        devices = model_parallel_devices(device, dist_info.local_rank)
        if device.type == "cuda" and devices[1].index >= torch.cuda.device_count():  # type: ignore[operator]
            raise UserError(f"model_parallel=2 needs GPUs {devices[0].index} and {devices[1].index} for this process; "
                            f"this machine has {torch.cuda.device_count()}")
        try:
            model = ModelParallelAlexNet(model, devices)  # type: ignore[arg-type]
        except ValueError as e:
            raise UserError(f"model_parallel=2: {e}") from None
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        device = devices[0]  # input, logits and loss live on the first device
    # Dropout masks: a stream per process, reproducible from (seed, rank) (§4.2's dropout is the
    # only randomness drawn from torch's generators; crops, flips and colour noise are keyed hashes).
    torch.manual_seed(distributed.rank_seed(cfg.seed, dist_info.rank))
    plain = model
    eval_model: nn.Module = plain
    if dist_info.enabled and cfg.parallel == "owt":
        eval_model = owt.eval_replica(plain)  # evaluation: no collectives in its forward (refreshed before each)
        try:
            model, _ = owt.parallelize(plain, device, dist_info.world_size)
        except ValueError as e:
            raise UserError(f"parallel=owt with {dist_info.world_size} processes: {e}") from None
    elif dist_info.enabled:
        ids = [device.index] if device.type == "cuda" and cfg.model_parallel == 1 else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    distributed.register_comm_hook(cfg.ddp_comm_hook, model, log if dist_info.is_main else (lambda s: None))
    # With compile, the training step compiles model + loss as one function (FastStep); evaluation
    # compiles the plain model on its own.
    eval_model = torch.compile(eval_model) if cfg.compile else eval_model  # type: ignore[assignment]
    loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed, workers=cfg.workers, rank=dist_info.rank,
                        world_size=dist_info.world_size, pin_memory=device.type == "cuda",
                        limit_batches=cfg.max_steps_per_epoch, subset=cfg.train_subset,
                        decode=cfg.decode, device=device if cfg.decode != "cpu" else None)
    if dist_info.is_main:
        for note in getattr(loader, "notes", []):  # the streamed loader's settings that cannot take effect
            log(f"warning: {note}")
    if len(loader) == 0:
        raise UserError(f"{root}: {loader.n} training images make no full batch of {cfg.batch_size}; lower --batch-size")
    schedule = Schedule(cfg, len(loader))
    optimizer = build_optimizer(cfg, plain, schedule.base)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    augment = make_augment(cfg, train_ds, models.input_norm(cfg.model, cfg.model_options))
    # The paper's update as one fused kernel per parameter, where it is compiled; uncompiled it would
    # be a Python loop of small kernels per parameter, slower than PaperSGD's foreach passes. Both
    # compute the same rule (§5).
    step_fn = FastStep(model, optimizer, augment, device, amp=cfg.amp, channels_last=cfg.channels_last, compile=cfg.compile,
                       fused_optimizer=cfg.compile, label_smoothing=cfg.label_smoothing, scaler=scaler)
    return Context(cfg=cfg, out=out, model=model, eval_model=eval_model, optimizer=optimizer, schedule=schedule,
                   augment=augment, train_loader=loader, val_ds=val_ds, train_ds=train_ds,
                   prec=Precision(device, cfg.amp, cfg.channels_last), step_fn=step_fn, dist=dist_info, meta=model_meta(cfg, train_ds),
                   devices=devices, log=log if dist_info.is_main else (lambda s: None), scaler=scaler)


def check_parallel(cfg: TrainConfig, info: distributed.DistInfo) -> None:
    """Combinations ``parallel=owt`` cannot honour, refused before any work (on every rank alike)."""
    if cfg.parallel != "owt":
        return
    if cfg.model_parallel == 2:
        raise UserError("parallel=owt with model_parallel=2: the FC layers cannot be split both between processes "
                        "(owt) and between the §3.2 towers; choose one")
    if info.enabled and cfg.compile:
        raise UserError("parallel=owt with compile=true: the sharded FC layers are not compiled (untested); "
                        "set compile=false")
    if info.enabled and cfg.amp == "fp16":
        raise UserError("parallel=owt with amp=fp16: the gradient scaler does not handle the sharded FC layers; "
                        "use amp=bf16 or none")


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
            "input_norm": models.input_norm(cfg.model, cfg.model_options), "data": cfg.data, "image_size": list(ds.image_size)}


def make_augment(cfg: TrainConfig, ds: PreparedDataset, input_norm: str) -> Augment:
    crop = models.info(cfg.model).input_size
    return Augment.from_stats(ds.stats(), crop, random_crop=cfg.random_crop, flip=cfg.flip, pca_std=cfg.pca_std,
                              crop_padding=effective_crop_padding(cfg, ds.image_size, crop), input_norm=input_norm,
                              seed=cfg.seed)


# -- the weights file -----------------------------------------------------------------------------


def final_meta(ctx: Context, row: dict[str, Any]) -> dict[str, Any]:
    """The weights file's metadata: what rebuilds the model (:func:`model_meta`), plus the recipe,
    the last epoch's metrics (without timings) and the git commit, so a published file says how
    it was made."""
    env = run_folder.read_environment(ctx.out) or {}
    return {**ctx.meta,
            "recipe": {k: v for k, v in ctx.cfg.to_dict().items() if k not in NOT_IN_RECIPE},
            "metrics": {k: v for k, v in row.items() if k not in run_folder.TIMING_FIELDS},
            "git_sha": env.get("git_sha"), "alexnet_version": env.get("alexnet"), "torch_version": env.get("torch")}


# -- the loop --------------------------------------------------------------------------------------


def check_loss(ctx: Context, loss: float, global_step: int, epoch: int, stall_count: int) -> int:
    """Stop on a non-finite loss; warn when the loss sits at chance (ln C) for ``stall_steps``.
    Returns the new count of consecutive steps at chance."""
    if not math.isfinite(loss):
        raise diverged(ctx, global_step, epoch, f"the loss is {loss}")
    if ctx.cfg.stall_steps <= 0:
        return stall_count
    chance = math.log(ctx.train_ds.num_classes)
    stall_count = stall_count + 1 if abs(loss - chance) < 0.02 * chance else 0
    if stall_count == ctx.cfg.stall_steps:
        ctx.log(f"warning: the loss has stayed at chance level (ln {ctx.train_ds.num_classes} = {chance:.3f}) for "
                f"{ctx.cfg.stall_steps} steps (step {global_step}); the paper's bias-1 initialisation is known to stall in "
                f"some setups (try a lower --lr, or with init=paper --model-opt bias_init=0.1)")
    return stall_count


def train_one_epoch(ctx: Context, state: RunState, stop: signals.StopRequest,
                    checkpointer: Checkpointer) -> tuple[dict[str, float], bool]:
    """Train the rest of epoch ``state.epoch``, advancing ``state``; returns its loss, error and
    throughput, and whether a stop was requested (then the epoch is unfinished and ``state`` says
    where it stopped).

    Each step is ``ctx.step_fn`` (:class:`~alexnet.engine.fast_step.FastStep`): its loss is the
    mean over this process's slice of the global batch; DDP averages the gradients over the
    processes, so the step equals one on the whole global batch."""
    cfg, loader = ctx.cfg, ctx.train_loader
    ctx.model.train()
    loader.set_epoch(state.epoch)
    n_batches = len(loader)
    sums = state.epoch_sums.tensor()  # images, loss sum, hits (all processes)
    images0 = float(sums[0])
    t0 = time.time()
    if ctx.tb_steps is not None:
        ctx.tb_steps.start_epoch(images0)
    # A bar on a terminal; in a log file a line every ALEXNET_LOG_EVERY seconds (the epoch's own
    # summary line comes from _loop).
    bar = Progress(n_batches, f"epoch {state.epoch + 1}/{cfg.epochs}", "batch", initial=state.batch_in_epoch,
                   enabled=cfg.progress and ctx.dist.is_main, file=sys.stdout, leave=False)
    # Nothing in a step makes the host wait for the device: the step's loss, hits and image count
    # stay on the device (``pending``) and are read in one copy every ``check_every`` steps (1 on
    # the CPU, where reading costs nothing, 20 on GPUs), at a checkpoint, at every
    # ``tensorboard_every``-th step (its scalars) and when a signal came (:func:`_read_steps`).
    check_every = 1 if ctx.prec.device.type == "cpu" else 20
    tb_every = cfg.tensorboard_every if cfg.tensorboard else 0  # the same on every rank: reads are collective
    pending: list[torch.Tensor] = []
    stopped = False
    for b in loader.iterate(start_batch=state.batch_in_epoch):
        set_lr(ctx.optimizer, ctx.schedule.lr_at(state.global_step))
        loss, hits = ctx.step_fn(b.images, b.labels, b.indices, state.epoch)
        n = len(b.labels)
        # new_full: the count is written by a kernel on the device, not copied from the host.
        pending.append(torch.stack([loss.new_full((), float(n), dtype=torch.float64), loss.double() * n, hits.double()]))
        state.global_step += 1
        state.batch_in_epoch += 1
        save_now = bool(cfg.save_every) and state.global_step % cfg.save_every == 0 and state.batch_in_epoch < n_batches
        tb_now = bool(tb_every) and state.global_step % tb_every == 0
        if (state.batch_in_epoch % check_every == 0 or save_now or tb_now or state.batch_in_epoch == n_batches
                or (stop.requested and not ctx.dist.enabled)):
            stopped = _read_steps(ctx, state, pending, sums, stop.requested, bar, tb_now)
        bar.update(1)
        if save_now:
            checkpointer.write(state, epoch_time_s=state.epoch_time_s + time.time() - t0)
        if stopped:
            break
    bar.close()
    dt = time.time() - t0
    state.epoch_time_s += dt
    n = max(1.0, float(sums[0]))
    return {"train_loss": float(sums[1]) / n, "train_top1_err": 1 - float(sums[2]) / n,
            "img_per_s": (float(sums[0]) - images0) / max(dt, 1e-9), "train_images": int(sums[0]),
            "epoch_time_s": state.epoch_time_s}, stopped


def _read_steps(ctx: Context, state: RunState, pending: list[torch.Tensor], sums: torch.Tensor, stop_requested: bool,
                bar: Progress, tb_now: bool) -> bool:
    """The one read of the device for the steps in ``pending`` (emptied), summed over the
    processes with one all-reduce that also carries the stop requests: each step's loss is checked
    (:func:`check_loss`) and added to ``sums`` one by one in step order, so where the reads fall
    (device, cadence, a resumed run) does not change them. Returns whether any process asked to
    stop."""
    block, stopped = distributed.sum_and_any(torch.stack(pending), stop_requested)  # k×3, float64, on the host
    pending.clear()
    first = state.global_step - len(block) + 1
    for i, row in enumerate(block):
        state.stall_count = check_loss(ctx, float(row[1] / row[0]), first + i, state.epoch, state.stall_count)
        sums += row
    state.epoch_sums = EpochSums.of(sums)
    loss, lr = float(block[-1, 1] / block[-1, 0]), ctx.optimizer.param_groups[0]["lr"]
    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2g}")
    if tb_now and ctx.tb_steps is not None:
        ctx.tb_steps.log(state.global_step, loss, lr, float(sums[0]))
    return stopped


def full_model(ctx: Context) -> nn.Module:
    """What evaluates and what the weights file is written from: ``eval_model``, first refreshed
    from the trained shards under ``parallel=owt`` (a collective: every rank calls it)."""
    if ctx.dist.enabled and ctx.cfg.parallel == "owt":
        owt.refresh(ctx.eval_model, ctx.model)
    return ctx.eval_model


def validate(ctx: Context, ten_crop: bool) -> dict[str, float]:
    """The validation metrics; with ``plateau_on: select`` also the selection half's top-1 error
    (``val_select_top1_err``), the one the plateau schedule then reads."""
    select = selection_half(ctx.val_ds.labels) if ctx.cfg.plateau_on == "select" else None
    r = evaluate(full_model(ctx), ctx.val_ds, ctx.augment, ctx.prec, batch_size=ctx.cfg.eval_batch_size or ctx.cfg.batch_size,
                 ten_crop=ten_crop, workers=ctx.cfg.workers, rank=ctx.dist.rank, world_size=ctx.dist.world_size,
                 subset=select)
    out = {"val_top1_err": r.top1_err, "val_top5_err": r.top5_err, "val_loss": r.loss, "val_images": r.n}
    if r.subset is not None:
        out["val_select_top1_err"] = r.subset.top1_err
    return out


def run(cfg: TrainConfig, out: str | Path, *, resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg`` into the run folder ``out``: what ``alexnet train`` runs.

    Under ``torchrun --max-restarts N``, workers that the elastic agent restarted after a failure
    (TORCHELASTIC_RESTART_COUNT > 0) resume the run from its latest checkpoint, as with
    ``resume=True``, provided this torchrun job started it (``run_folder.ELASTIC_RUN_ID``).

    Args:
        cfg: The resolved training config (:func:`alexnet.config.resolve`).
        out: The run folder: new, or with ``resume`` one this function wrote.
        resume: Continue from the run's latest checkpoint (bitwise identical to an uninterrupted run on CPU).
        log: Where the run's lines go.

    Returns:
        The run's summary (also written to ``summary.json``).

    Raises:
        Interrupted: After a clean stop (SIGTERM/SIGINT): a checkpoint was written.
        TrainingDiverged: On a non-finite loss; the last good checkpoint stays intact.
        UserError: On bad input (one line).
    """
    out = Path(out)
    dist_info = distributed.from_env()
    restarted = not resume and distributed.restart_count() > 0
    if restarted:
        resume = run_folder.started_by_job(out, os.environ.get("TORCHELASTIC_RUN_ID"))
    # Rank 0 writes the run folder and holds its lock for the whole run: a second train (or a
    # second --resume) into the same folder is refused at once, before it reads or writes anything.
    lock = lock_folder(out) if dist_info.is_main else None
    ctx: Context | None = None
    try:
        if not resume and run_folder.holds_run(out):
            raise UserError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
        ctx = setup(cfg, out, log=log)
        distributed.barrier()  # the run folder exists before anyone looks into it
        if restarted:
            resume = distributed.agree_on_restart(resume, ctx.out, ctx.log)
        if ctx.dist.is_main and not resume and os.environ.get("TORCHELASTIC_RUN_ID"):
            run_folder.write_elastic_run_id(out, os.environ["TORCHELASTIC_RUN_ID"])
        restored = resumed_state(ctx) if resume else None
        if restored is not None:
            done = finished(ctx, restored)
            if done is not None:
                return done
        state = restored or RunState()
        if ctx.dist.is_main:
            run_folder.write_start(ctx.out, ctx.cfg, resume=resume, epochs_done=state.epoch)
        tb, tb_steps = run_folder.open_tensorboard(ctx.out, ctx.cfg, epoch=state.epoch, global_step=state.global_step,
                                                   is_main=ctx.dist.is_main, log=ctx.log)
        ctx = dataclasses.replace(ctx, tb=tb, tb_steps=tb_steps)
        return _loop(ctx, state)
    finally:
        if ctx is not None and ctx.tb is not None:
            ctx.tb.close()
        if ctx is not None and ctx.tb_steps is not None:
            ctx.tb_steps.close()
        if ctx is not None:
            ctx.train_loader.close()  # its worker processes serve every epoch; stop them here
        distributed.shutdown()
        if lock is not None:
            lock.release()


def _loop(ctx: Context, state: RunState) -> dict[str, Any]:
    cfg, log = ctx.cfg, ctx.log
    n_params = sum(p.numel() for p in ckpt.unwrap(ctx.model).parameters())
    placement = f"devices {', '.join(map(str, ctx.devices))} (§3.2 split)" if cfg.model_parallel == 2 else f"device {ctx.prec.device}"
    if cfg.parallel == "owt" and ctx.dist.enabled:
        placement += f", FC layers split over the {ctx.dist.world_size} processes (parallel=owt)"
    log(f"training {cfg.model} ({n_params:,} parameters) on {cfg.data}: {len(ctx.train_ds):,} train / {len(ctx.val_ds):,} val "
        f"images, {ctx.train_ds.num_classes} classes, {cfg.epochs} epochs of {len(ctx.train_loader)} batches of "
        f"{cfg.batch_size}" + (f" ({ctx.dist.world_size} processes)" if ctx.dist.enabled else "")
        + f", recipe {cfg.recipe}, {placement}")
    log(describe_augmentation(cfg, ctx.train_ds.image_size, ctx.augment.crop))
    t_start = time.time()
    checkpointer = Checkpointer(ctx, t_start)
    # A resumed run that had finished training but not written its final weights (a full disk)
    # reports its last epoch's row.
    row: dict[str, Any] = run_folder.last_metrics(ctx.out) if state.epoch >= cfg.epochs else {}
    # A signal after the last point the loop looks (the final checkpoint) lets the finished run write
    # its weights and summary.
    with signals.StopRequest(stop_if_unanswered=False) as stop:
        while state.epoch < cfg.epochs:
            lr = ctx.schedule.lr_at(state.global_step - state.batch_in_epoch)  # the epoch's first step, also on resume
            tr, stopped = train_one_epoch(ctx, state, stop, checkpointer)
            if stopped:
                raise Interrupted(stop.exit_code(), checkpointer.write(state), signals.name(stop.signum))
            val: dict[str, float] = {}
            if (state.epoch + 1) % cfg.eval_every == 0 or state.epoch + 1 == cfg.epochs:
                try:
                    # One process: a signal abandons the evaluation (other processes could not follow).
                    with stop.cut_short() if not ctx.dist.enabled else nullcontext():
                        val = validate(ctx, cfg.ten_crop)
                except signals.CutShort:
                    # The epoch's training is complete (batch_in_epoch = its length): the resumed
                    # run goes straight to this evaluation.
                    raise Interrupted(stop.exit_code(), checkpointer.write(state), signals.name(stop.signum)) from None
            dropped = ctx.schedule.end_of_epoch(val.get("val_select_top1_err" if cfg.plateau_on == "select" else "val_top1_err"))
            row = {"epoch": state.epoch + 1, "lr": lr, **tr, **val, "step": state.global_step,
                   "time_s": state.elapsed_s + time.time() - t_start}
            if ctx.dist.is_main:
                run_folder.record_epoch(ctx.out, row, ctx.tb)
            log(f"epoch {state.epoch + 1:3d}/{cfg.epochs}  loss {tr['train_loss']:.3f}  train err {tr['train_top1_err']:.3f}"
                + (f"  val top-1 {val['val_top1_err']:.3f}  top-5 {val['val_top5_err']:.3f}" if val else "")
                + f"  lr {lr:.2g}  {tr['img_per_s']:.0f} img/s" + ("  (lr / 10)" if dropped else ""))
            state.next_epoch()
            path = checkpointer.write(state)
            if distributed.agree(stop.requested, ctx.prec.device) and state.epoch < cfg.epochs:
                raise Interrupted(stop.exit_code(), path, signals.name(stop.signum))
    final = full_model(ctx)
    if ctx.dist.is_main:
        ckpt.save_weights(final, ctx.out / run_folder.WEIGHTS, final_meta(ctx, row), ctx.train_ds.stats())
    summary = {"epochs": cfg.epochs, "steps": state.global_step, "final": row, "time_s": state.elapsed_s + time.time() - t_start,
               "weights": str(ctx.out / run_folder.WEIGHTS)}
    if ctx.dist.is_main:
        run_folder.write_summary(ctx.out, summary)
    distributed.barrier()  # nobody tears the process group down while rank 0 still writes
    return summary
