"""The training loop: small functions that return their metrics; :func:`run` wires them.

Its state comes in three parts, each passed explicitly: a frozen :class:`Context` (what the run is
made of: config, networks, optimizer, data, the step ``step_fn``), built once by :func:`setup`; a
mutable :class:`RunState` (where the run is: epoch, batch, ``global_step``, the epoch's
:class:`EpochSums`), saved in every checkpoint beside the weights and the optimizer's state; and this process's :class:`StopFlag`
(what a signal set) and :class:`Checkpointer` (what it last wrote).

Runs you can trust:

* **Exact resume.** A checkpoint (every ``save_every`` steps and at every epoch end) holds the
  model, the optimizer, the schedule and its plateau state, the step, the epoch, the position in
  the epoch with the epoch's running loss/error sums, every process's RNG states and the config.
  Everything else is a pure function of (seed, epoch, sample index): the shuffle
  (:func:`alexnet.data.loader.epoch_permutation`) and the augmentation
  (:mod:`alexnet.data.augment`). So a run killed at any moment and resumed with ``--resume`` ends
  with the same weights, bit for bit on the CPU, as one that was never stopped.
* **Clean stops.** SIGTERM/SIGINT set a flag: the current step finishes, a checkpoint is written,
  and :class:`Interrupted` (exit 143/130) carries its path. A second signal stops at once.
* **Divergence.** A non-finite loss (or non-finite weights at a checkpoint) stops the run with
  :class:`TrainingDiverged` naming the step, the loss and the last good checkpoint, which is never
  overwritten by bad weights. ``stall_steps`` warns when the loss sits at chance level.
* **torchrun.** Each process trains on its slice of every global batch; DDP averages the
  gradients of the per-process mean losses, which equals the mean over the global batch since the
  slices have equal size. Decisions that must agree (a signal, a non-finite loss) are all-reduced
  at fixed steps; rank 0 writes logs and checkpoints and tells the others how it went. Every
  process must have rank 0's config (:func:`check_same_config`). A checkpoint resumes on any
  number of processes that divides its global batch (the position counts global batches of one
  global shuffle), and workers restarted by ``torchrun --max-restarts`` resume by themselves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from alexnet import models, signals
from alexnet.config import TrainConfig, save_yaml
from alexnet.data.augment import Augment
from alexnet.data.format import PreparedDataset
from alexnet.data.loader import BatchLoader
from alexnet.data.resolve import open_splits, resolve_data
from alexnet.engine import checkpoint as ckpt
from alexnet.engine import distributed
from alexnet.engine.checks import check_against_data, describe_augmentation, effective_crop_padding, same_classes
from alexnet.engine.device import keep_freed_cpu_memory, pick_device
from alexnet.engine.evaluate import Precision, evaluate, selection_half
from alexnet.engine.fast_step import FastStep
from alexnet.engine.metrics import read_metrics
from alexnet.engine.model_parallel import ModelParallelAlexNet, model_parallel_devices
from alexnet.engine.optim import Schedule, build_optimizer, set_lr
from alexnet.environment import environment
from alexnet.errors import UserError
from alexnet.files import atomic_write_bytes, atomic_write_text, lock_folder
from alexnet.progress import Progress

METRICS = "metrics.jsonl"
# metrics.jsonl fields that measure time rather than training: they differ between a resumed run
# and an uninterrupted one; every other field is identical.
TIMING_FIELDS = ("img_per_s", "epoch_time_s", "time_s")


class TrainingDiverged(UserError):
    """A non-finite loss: the run stops; the last good checkpoint stays intact."""


class Interrupted(Exception):
    """SIGTERM/SIGINT: a checkpoint was written; ``exit_code`` is 143 or 130."""

    def __init__(self, exit_code: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted (exit {exit_code})")
        self.exit_code = exit_code
        self.checkpoint = checkpoint


class _StopEvaluation(Exception):
    """Raised by the signal handler to cut a single-process evaluation short."""


@dataclass
class EpochSums:
    """The epoch so far, over every process: images trained, their summed loss, their top-1 hits."""

    images: float = 0.0
    loss_sum: float = 0.0
    top1_hits: float = 0.0

    def tensor(self) -> torch.Tensor:
        return torch.tensor([self.images, self.loss_sum, self.top1_hits], dtype=torch.float64)

    @classmethod
    def of(cls, t: torch.Tensor) -> "EpochSums":
        return cls(*t.tolist())


@dataclass
class RunState:
    """Where the run is: the mutable loop state, saved in every checkpoint."""

    epoch: int = 0  # the epoch in progress (0-based) = epochs finished
    batch_in_epoch: int = 0  # batches of that epoch already trained
    global_step: int = 0  # optimizer steps so far
    elapsed_s: float = 0.0  # training wall time before this process
    stall_count: int = 0  # consecutive steps with the loss at chance level
    epoch_sums: EpochSums = field(default_factory=EpochSums)
    epoch_time_s: float = 0.0  # time spent on this epoch before this process

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_sums = EpochSums()
        self.epoch_time_s = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``run`` entry (primitives only; ``step`` and ``epoch_sums`` as a list of
        images, loss sum, hits, as checkpoints have always stored them)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.global_step,
                "elapsed_s": self.elapsed_s, "stall_count": self.stall_count,
                "epoch_sums": [self.epoch_sums.images, self.epoch_sums.loss_sum, self.epoch_sums.top1_hits],
                "epoch_time_s": self.epoch_time_s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunState":
        d = dict(d)
        sums = EpochSums(*d.pop("epoch_sums", [0.0, 0.0, 0.0]))
        return cls(global_step=d.pop("step", 0), epoch_sums=sums, **d)


@dataclass
class StopFlag:
    """What the SIGTERM/SIGINT handler sets (the first signal's number) and reads (whether a
    single-process evaluation is in progress, which the signal then cuts short)."""

    signum: int = 0
    evaluating: bool = False

    def exit_code(self) -> int:
        return 130 if self.signum == signal.SIGINT else 143


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
    tb_steps: "StepScalars | None" = None  # per-step scalars (rank 0, with tensorboard=True and tensorboard_every > 0)


# -- set-up --------------------------------------------------------------------------------------


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


# Config fields that say where and how fast a run ran and how it reported, not what it computed: a
# run may be resumed with other values.
RUNTIME_FIELDS = ("device", "workers", "progress", "tensorboard", "tensorboard_every", "eval_batch_size")
# ... and how often it saved: left out of the recipe stored with the weights (a resumed run's weights
# file equals an uninterrupted one's).
NOT_IN_RECIPE = (*RUNTIME_FIELDS, "save_every", "keep_checkpoints")


def final_meta(ctx: Context, row: dict[str, Any]) -> dict[str, Any]:
    """The weights file's metadata: what rebuilds the model (:func:`model_meta`), plus the recipe,
    the last epoch's metrics (without timings) and the git commit, so a published file says how
    it was made."""
    env_file = ctx.out / "environment.json"
    env = json.loads(env_file.read_text()) if env_file.is_file() else {}
    return {**ctx.meta,
            "recipe": {k: v for k, v in ctx.cfg.to_dict().items() if k not in NOT_IN_RECIPE},
            "metrics": {k: v for k, v in row.items() if k not in TIMING_FIELDS},
            "git_sha": env.get("git_sha"), "alexnet_version": env.get("alexnet"), "torch_version": env.get("torch")}


def make_augment(cfg: TrainConfig, ds: PreparedDataset, input_norm: str) -> Augment:
    crop = models.info(cfg.model).input_size
    return Augment.from_stats(ds.stats(), crop, random_crop=cfg.random_crop, flip=cfg.flip, pca_std=cfg.pca_std,
                              crop_padding=effective_crop_padding(cfg, ds.image_size, crop), input_norm=input_norm,
                              seed=cfg.seed)


def rng_state(devices: list[torch.device]) -> dict[str, Any]:
    """This process's RNG states: the CPU generator and that of every CUDA device it uses
    (dropout draws from the generator of the device the activations are on)."""
    st: dict[str, Any] = {"torch": torch.get_rng_state()}
    cuda = sorted({d.index or 0 for d in devices if d.type == "cuda"})
    if cuda:
        st["cuda"] = {str(i): torch.cuda.get_rng_state(i) for i in cuda}
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    for i, s in st.get("cuda", {}).items():
        torch.cuda.set_rng_state(s, int(i))


# -- checkpoints -----------------------------------------------------------------------------------


def checkpoint_state(ctx: Context, state: RunState, elapsed_s: float, rngs: list[dict[str, Any]]) -> dict[str, Any]:
    """What a checkpoint holds; ``elapsed_s``: the run's training wall time up to now."""
    return {
        "model": ckpt.model_state_dict(ctx.model),  # the single-device layout, whatever the placement
        "optimizer": ctx.optimizer.state_dict(),
        "schedule": ctx.schedule.state_dict(),
        "run": {**state.to_dict(), "elapsed_s": elapsed_s},
        "rng": {"world_size": ctx.dist.world_size, "ranks": rngs},
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else {},
        "config": ctx.cfg.to_dict(),
        "meta": json.dumps(ctx.meta),
    }


class Checkpointer:
    """Writes the run's checkpoints from every rank (:meth:`write`) and remembers the last one, so
    that a stop right after a periodic checkpoint does not write the same state twice."""

    def __init__(self, ctx: Context, t_start: float) -> None:
        self.ctx = ctx
        self.t_start = t_start  # when this process started training: the clock of ``elapsed_s``
        self.last: tuple[int, Path | None] | None = None  # (global step, path) of the last write

    def write(self, state: RunState) -> Path | None:
        """Every rank calls this: the RNG states are gathered, rank 0 writes, everyone learns the
        outcome (a failed write raises the same error on every rank instead of leaving the others
        waiting)."""
        ctx = self.ctx
        if self.last is not None and self.last[0] == state.global_step and state.batch_in_epoch > 0:
            return self.last[1]  # this very state is already on disk
        if not ckpt.params_finite(ctx.model):
            # Never let bad weights rotate the last good checkpoint out.
            raise _diverged(ctx, state.global_step, state.epoch, "the weights became non-finite")
        rngs = distributed.all_gather_object(rng_state(ctx.devices))
        result: tuple[str | None, str | None] = (None, None)
        if ctx.dist.is_main:
            try:
                d = checkpoint_state(ctx, state, state.elapsed_s + (time.time() - self.t_start), rngs)
                path = ckpt.save_checkpoint(ctx.out, d, state.global_step, keep=ctx.cfg.keep_checkpoints)
                result = (str(path), None)
            except ckpt.CheckpointError as e:
                result = (None, str(e))
        path_s, err = distributed.broadcast_object(result)
        if err:
            raise ckpt.CheckpointWriteError(err)
        path = Path(path_s) if path_s else None
        self.last = (state.global_step, path)
        return path


def _load_for_resume(ctx: Context, path: Path | None) -> dict[str, Any] | None:
    """The checkpoint on every rank: each reads it where it can see the file (a shared run
    folder); otherwise rank 0 reads it and sends it (several machines without shared storage)."""
    path_s, err = distributed.broadcast_object((str(path) if path else None, None))
    if path_s is None:
        return None
    sees = distributed.all_gather_object(Path(path_s).is_file())
    if all(sees):
        d, err = _try_load(path_s)
        errs = [e for e in distributed.all_gather_object(err) if e]
        if errs:
            raise ckpt.CheckpointError(errs[0])
        return d
    d, err = distributed.broadcast_object(_try_load(path_s) if ctx.dist.is_main else (None, None))
    if err:
        raise ckpt.CheckpointError(err)
    return d


def _try_load(path: str) -> tuple[dict[str, Any] | None, str | None]:
    """The checkpoint, or the line saying why it cannot be read (sent to the other ranks)."""
    try:
        return ckpt.load_checkpoint(path), None
    except UserError as e:
        return None, str(e)


def restore(ctx: Context, d: dict[str, Any], path: Path) -> RunState:
    try:
        rng = d["rng"]
        saved_batch = int(d["config"]["batch_size"])
        if saved_batch != ctx.cfg.batch_size:
            # The position in the epoch is a number of global batches: another batch size would
            # skip or repeat samples.
            raise UserError(f"{path}: written with a global batch of {saved_batch}; resume it with --batch-size "
                            f"{saved_batch} (now {ctx.cfg.batch_size}), on any number of processes that divides it")
        # The run's classes, not only their count: --resume --data OTHER must not train on others.
        same_classes(json.loads(d.get("meta") or "{}").get("classes"), path, ctx.meta["classes"], ctx.cfg.data)
        ckpt.load_model_state_dict(ctx.model, d["model"])
        ctx.optimizer.load_state_dict(d["optimizer"])
        ctx.schedule.load_state_dict(d["schedule"])
        if ctx.scaler is not None and d.get("scaler"):
            ctx.scaler.load_state_dict(d["scaler"])
        state = RunState.from_dict(d["run"])
        saved_world = int(rng["world_size"])
        if saved_world == ctx.dist.world_size:
            set_rng_state(rng["ranks"][ctx.dist.rank])
        else:
            # Another world size: the samples, their order in the global batches and their
            # augmentation are the same (keyed by seed, epoch and sample index); only the dropout
            # masks, drawn per process, come from a new stream per (seed, rank, step).
            torch.manual_seed(distributed.rank_seed(ctx.cfg.seed, ctx.dist.rank, state.global_step))
            ctx.log(f"resuming a checkpoint of {saved_world} process(es) with {ctx.dist.world_size}: the same samples in "
                    f"the same global batches of {ctx.cfg.batch_size}; dropout masks from a new stream per process")
    except (KeyError, RuntimeError, TypeError, ValueError, IndexError) as e:
        raise UserError(f"{path}: does not match this run's model or config ({str(e).splitlines()[0][:200]})") from None
    return state


# -- logging -------------------------------------------------------------------------------------


def append_metrics(ctx: Context, row: dict[str, Any]) -> None:
    if not ctx.dist.is_main:
        return
    with open(ctx.out / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if ctx.tb is not None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                ctx.tb.add_scalar(k, v, row["epoch"])
        ctx.tb.flush()


def _last_metrics(out: Path) -> dict[str, Any]:
    p = out / METRICS
    rows = read_metrics(p) if p.is_file() else []
    return rows[-1] if rows else {}


def truncate_metrics(out: Path, epochs_done: int) -> None:
    """On resume, keep only the rows of epochs that finished before the checkpoint (a row written
    after it, or torn by the kill, is dropped: the resumed run writes it again)."""
    p = out / METRICS
    if not p.exists():
        return
    rows = [r for r in read_metrics(p) if r.get("epoch", 0) <= epochs_done]
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    atomic_write_bytes(p, text)


# -- signals ---------------------------------------------------------------------------------------


@contextmanager
def stop_on_signals(dist: distributed.DistInfo) -> Iterator[StopFlag]:
    """SIGTERM/SIGINT set the flag this yields; the loop finishes its step, checkpoints and stops.
    A single-process evaluation in progress is abandoned (it is redone on resume). A second signal
    stops at once."""
    stop = StopFlag()
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.signum:  # a second signal: stop now
            raise KeyboardInterrupt
        stop.signum = signum
        if stop.evaluating and not dist.enabled:
            raise _StopEvaluation

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    pending = signals.take_pending()  # arrived while the command started: stop at the first step
    if pending is not None:
        handler(pending, None)
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _agree(ctx: Context, flag: bool) -> bool:
    """Whether any process raised ``flag`` (a collective: every rank calls it at the same step)."""
    if not ctx.dist.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=ctx.prec.device)
    return bool(distributed.all_reduce_sum(t).item() > 0)


# -- the loop --------------------------------------------------------------------------------------


def _diverged(ctx: Context, global_step: int, epoch: int, what: str) -> TrainingDiverged:
    last = ckpt.latest_checkpoint(ctx.out)
    where = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
    return TrainingDiverged(
        f"{what} at step {global_step} (epoch {epoch + 1}); training diverged — lower the learning rate "
        f"(now {ctx.optimizer.param_groups[0]['lr']:g}); {where}"
    )


def check_loss(ctx: Context, loss: float, global_step: int, epoch: int, stall_count: int) -> int:
    """Stop on a non-finite loss; warn when the loss sits at chance (ln C) for ``stall_steps``.
    Returns the new count of consecutive steps at chance."""
    if not math.isfinite(loss):
        raise _diverged(ctx, global_step, epoch, f"the loss is {loss}")
    if ctx.cfg.stall_steps <= 0:
        return stall_count
    chance = math.log(ctx.train_ds.num_classes)
    stall_count = stall_count + 1 if abs(loss - chance) < 0.02 * chance else 0
    if stall_count == ctx.cfg.stall_steps:
        ctx.log(f"warning: the loss has stayed at chance level (ln {ctx.train_ds.num_classes} = {chance:.3f}) for "
                f"{ctx.cfg.stall_steps} steps (step {global_step}); the paper's bias-1 initialisation is known to stall in "
                f"some setups (try a lower --lr, or with init=paper --model-opt bias_init=0.1)")
    return stall_count


def train_one_epoch(ctx: Context, state: RunState, stop: StopFlag, checkpointer: Checkpointer) -> tuple[dict[str, float], bool]:
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
    # ``tensorboard_every``-th step (its scalars) and when a signal came. Losses are checked then;
    # the epoch's sums add the steps one by one in step order, so where the reads fall (device,
    # cadence, a resumed run) does not change them.
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
        local_stop = bool(stop.signum) and not ctx.dist.enabled
        if (state.batch_in_epoch % check_every == 0 or save_now or tb_now or state.batch_in_epoch == n_batches
                or local_stop):
            block = torch.stack(pending)  # k×3, float64
            pending.clear()
            if ctx.dist.enabled:  # one all-reduce: every rank's sums, and whether any rank was signalled
                flag = block.new_zeros((1, 3))
                if stop.signum:
                    flag[0, 0] = 1.0
                block = distributed.all_reduce_sum(torch.cat([block, flag]))
                block = block.cpu()  # the one read of this block
                block, stopped = block[:-1], bool(block[-1, 0] > 0)
            else:
                block = block.cpu()  # the one read of this block
                stopped = local_stop
            first = state.global_step - len(block) + 1
            for i, row in enumerate(block):
                state.stall_count = check_loss(ctx, float(row[1] / row[0]), first + i, state.epoch, state.stall_count)
                sums += row
            state.epoch_sums = EpochSums.of(sums)
            bar.set_postfix(loss=f"{float(block[-1, 1] / block[-1, 0]):.3f}", lr=f"{ctx.optimizer.param_groups[0]['lr']:.2g}")
            if tb_now and ctx.tb_steps is not None:
                ctx.tb_steps.log(state.global_step, float(block[-1, 1] / block[-1, 0]), ctx.optimizer.param_groups[0]["lr"],
                                 float(sums[0]))
        bar.update(1)
        if save_now:
            saved_time = state.epoch_time_s
            state.epoch_time_s = saved_time + time.time() - t0
            checkpointer.write(state)
            state.epoch_time_s = saved_time
        if stopped:
            break
    bar.close()
    dt = time.time() - t0
    state.epoch_time_s += dt
    n = max(1.0, float(sums[0]))
    return {"train_loss": float(sums[1]) / n, "train_top1_err": 1 - float(sums[2]) / n,
            "img_per_s": (float(sums[0]) - images0) / max(dt, 1e-9), "train_images": int(sums[0]),
            "epoch_time_s": state.epoch_time_s}, stopped


def validate(ctx: Context, ten_crop: bool) -> dict[str, float]:
    """The validation metrics; with ``plateau_on: select`` also the selection half's top-1 error
    (``val_select_top1_err``), the one the plateau schedule then reads."""
    select = selection_half(ctx.val_ds.labels) if ctx.cfg.plateau_on == "select" else None
    r = evaluate(ctx.eval_model, ctx.val_ds, ctx.augment, ctx.prec, batch_size=ctx.cfg.eval_batch_size or ctx.cfg.batch_size,
                 ten_crop=ten_crop, workers=ctx.cfg.workers, rank=ctx.dist.rank, world_size=ctx.dist.world_size,
                 subset=select)
    out = {"val_top1_err": r.top1_err, "val_top5_err": r.top5_err, "val_loss": r.loss, "val_images": r.n}
    if r.subset is not None:
        out["val_select_top1_err"] = r.subset.top1_err
    return out


def setup(cfg: TrainConfig, out: Path, *, log: Callable[[str], None] = print) -> Context:
    dist_info = distributed.from_env()
    device = pick_device(cfg.device, dist_info.local_rank)
    if device.type == "cpu":
        keep_freed_cpu_memory()  # eager CPU steps would otherwise page-fault on every activation
    models.check_name(cfg.model)
    if cfg.model_parallel == 2 and cfg.model != "alexnet":
        raise UserError(f"model_parallel=2 does not apply to model {cfg.model!r}: it splits the two towers of the "
                        f"paper's network (§3.2); accepted: model alexnet")
    mi = models.info(cfg.model)
    root = resolve_data(cfg.data, mi.input_size, seed=0)
    train_ds, val_ds = open_splits(root)
    stats = train_ds.stats()
    try:  # settings this data cannot honour: refused here, before any work, on every rank alike
        warnings = check_against_data(cfg, image_size=train_ds.image_size, input_size=mi.input_size,
                                      eigval=stats.get("eigval"), train_images=len(train_ds))
    except UserError as e:
        raise UserError(f"{root}: {e}") from None
    if dist_info.is_main:
        for warning in warnings:
            log(f"warning: {warning}")
    distributed.init(dist_info, device)
    check_same_config(cfg)
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
    if dist_info.enabled:
        ids = [device.index] if device.type == "cuda" and cfg.model_parallel == 1 else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    _register_comm_hook(cfg, model, log if dist_info.is_main else (lambda s: None))
    # With compile, the training step compiles model + loss as one function (FastStep); evaluation
    # compiles the plain model on its own.
    eval_model = torch.compile(plain) if cfg.compile else plain  # type: ignore[assignment]
    optimizer = build_optimizer(cfg, plain)
    loader = BatchLoader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed, workers=cfg.workers, rank=dist_info.rank,
                         world_size=dist_info.world_size, pin_memory=device.type == "cuda",
                         limit_batches=cfg.max_steps_per_epoch, subset=cfg.train_subset,
                         decode=cfg.decode, device=device if cfg.decode != "cpu" else None)
    if len(loader) == 0:
        raise UserError(f"{root}: {loader.n} training images make no full batch of {cfg.batch_size}; lower --batch-size")
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    augment = make_augment(cfg, train_ds, models.input_norm(cfg.model, cfg.model_options))
    # The paper's update as one fused kernel per parameter, where it is compiled; uncompiled it would
    # be a Python loop of small kernels per parameter, slower than PaperSGD's foreach passes. Both
    # compute the same rule (§5).
    step_fn = FastStep(model, optimizer, augment, device, amp=cfg.amp, channels_last=cfg.channels_last, compile=cfg.compile,
                       fused_optimizer=cfg.compile, label_smoothing=cfg.label_smoothing, scaler=scaler)
    return Context(cfg=cfg, out=out, model=model, eval_model=eval_model, optimizer=optimizer, schedule=Schedule(cfg, len(loader)),
                   augment=augment, train_loader=loader, val_ds=val_ds, train_ds=train_ds,
                   prec=Precision(device, cfg.amp, cfg.channels_last), step_fn=step_fn, dist=dist_info, meta=model_meta(cfg, train_ds),
                   devices=devices, log=log if dist_info.is_main else (lambda s: None), scaler=scaler)


# Config fields that may differ between processes: how each reads its data and whether it draws bars.
LOCAL_FIELDS = ("workers", "progress")


def check_same_config(cfg: TrainConfig) -> None:
    """Every process must train the same config (on ``--resume`` each node reads RUN/config.yaml
    from its own disk): rank 0's is broadcast, each process compares its own with it, and a
    mismatch stops every process with the same one-line error (a collective: all ranks call it)."""
    if not distributed.is_initialized():
        return
    mine = {k: v for k, v in cfg.to_dict().items() if k not in LOCAL_FIELDS}
    ref = distributed.broadcast_object(mine)
    diff = next(((k, mine.get(k), ref.get(k)) for k in sorted(set(mine) | set(ref)) if mine.get(k) != ref.get(k)), None)
    diffs = distributed.all_gather_object(diff)
    bad = [(r, d) for r, d in enumerate(diffs) if d is not None]
    if bad:
        r, (k, v, v0) = bad[0]
        raise UserError(f"the processes do not agree on the config: rank {r} has {k}={v!r}, rank 0 has {k}={v0!r}; every "
                        f"node needs the same RUN/config.yaml (on --resume) or the same recipe and options")


COMM_HOOKS = {"bf16": "bf16_compress_hook", "fp16": "fp16_compress_hook"}


def _register_comm_hook(cfg: TrainConfig, model: nn.Module, log: Callable[[str], None]) -> None:
    """``ddp_comm_hook``: DDP all-reduces the gradients in bf16/fp16 instead of fp32 (half the
    bytes on the wire; each process's fp32 gradient is divided by the world size, rounded, summed
    in that dtype and cast back). Opt-in: it changes the numbers, and it only pays where the
    all-reduce is bandwidth-bound (several nodes on a slow network); see configs/fast.yaml."""
    if cfg.ddp_comm_hook == "none":
        return
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        log(f"warning: ddp_comm_hook={cfg.ddp_comm_hook} has no effect in a single process (it compresses the gradient "
            f"all-reduce between torchrun processes)")
        return
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    name = COMM_HOOKS[cfg.ddp_comm_hook]
    model.register_comm_hook(None, getattr(default_hooks, name))
    log(f"gradient all-reduce in {cfg.ddp_comm_hook} ({name})")


class StepScalars:
    """Per-step TensorBoard scalars in RUN/tb/steps, against the optimizer step: every
    ``tensorboard_every``-th step's loss (the mean over the global batch) and learning rate, and
    the images per second since the previous such step of the epoch (evaluation and epoch
    boundaries are not counted). Their own event files: the per-epoch scalars of RUN/tb count
    epochs, and a resumed run hides what each logged after its checkpoint by its own counter."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.last: tuple[float, float] | None = None  # (time, images of the epoch) at the previous point

    def start_epoch(self, images: float) -> None:
        self.last = (time.time(), images)

    def log(self, step: int, loss: float, lr: float, images: float) -> None:
        """Called right after a read of the device (the time is that of a finished step)."""
        now = time.time()
        self.writer.add_scalar("step/train_loss", loss, step)
        self.writer.add_scalar("step/lr", lr, step)
        if self.last is not None and now > self.last[0] and images > self.last[1]:
            self.writer.add_scalar("step/img_per_s", (images - self.last[1]) / (now - self.last[0]), step)
        self.last = (now, images)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _open_tensorboard(ctx: Context, state: RunState) -> tuple[Any, StepScalars | None]:
    """The SummaryWriter of RUN/tb and the per-step scalars of RUN/tb/steps (rank 0, with
    tensorboard=True; per step when tensorboard_every > 0), or None."""
    if not ctx.cfg.tensorboard and ctx.cfg.tensorboard_every != TrainConfig.tensorboard_every:
        ctx.log(f"warning: tensorboard_every={ctx.cfg.tensorboard_every} has no effect without tensorboard (--tensorboard)")
    if not (ctx.cfg.tensorboard and ctx.dist.is_main):
        return None, None
    try:
        # Optional and slow to import: only runs that ask for TensorBoard load it.
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        ctx.log("tensorboard is not installed: pip install 'alexnet[tensorboard]'; logging to metrics.jsonl only")
        return None, None
    # purge_step: on resume, TensorBoard hides the events the killed process logged after its
    # checkpoint (they are logged again): epochs in RUN/tb, steps in RUN/tb/steps.
    tb = SummaryWriter(str(ctx.out / "tb"), purge_step=state.epoch + 1 if state.epoch > 0 else None)
    steps = None
    if ctx.cfg.tensorboard_every:
        steps = StepScalars(SummaryWriter(str(ctx.out / "tb" / "steps"),
                                          purge_step=state.global_step + 1 if state.global_step > 0 else None))
    return tb, steps


# The torchrun job that started the run (TORCHELASTIC_RUN_ID: torchrun's --rdzv-id, a fresh one with
# --standalone): when torchrun --max-restarts restarts the workers, the restarted command resumes
# the run only if this job started it (never another run that happens to be in the folder).
ELASTIC_RUN_ID = "torchelastic_run_id"


def _started_by_this_job(out: Path) -> bool:
    try:
        return (out / ELASTIC_RUN_ID).read_text().strip() == os.environ.get("TORCHELASTIC_RUN_ID")
    except OSError:
        return False


def run(cfg: TrainConfig, out: str | Path, *, resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg`` into the run folder ``out``; returns the summary (also written to summary.json).

    Under ``torchrun --max-restarts N``, workers that the elastic agent restarted after a failure
    (TORCHELASTIC_RESTART_COUNT > 0) resume the run from its latest checkpoint, as with
    ``resume=True``, provided this torchrun job started it (:data:`ELASTIC_RUN_ID`).

    Raises :class:`Interrupted` after a clean stop (SIGTERM/SIGINT), :class:`TrainingDiverged`
    on a non-finite loss, :class:`~alexnet.errors.UserError` on bad input."""
    out = Path(out)
    dist_info = distributed.from_env()
    restarted = not resume and distributed.restart_count() > 0
    if restarted:
        resume = _started_by_this_job(out)
    # Rank 0 writes the run folder and holds its lock for the whole run: a second train (or a
    # second --resume) into the same folder is refused at once, before it reads or writes anything.
    lock = lock_folder(out) if dist_info.is_main else None
    ctx: Context | None = None
    try:
        if not resume and ((out / METRICS).exists() or ckpt.latest_checkpoint(out) is not None):
            raise UserError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
        ctx = setup(cfg, out, log=log)
        distributed.barrier()  # the run folder exists before anyone looks into it
        if restarted:
            resume = _agree_on_restart(ctx, resume)
        if ctx.dist.is_main and not resume and os.environ.get("TORCHELASTIC_RUN_ID"):
            atomic_write_text(out / ELASTIC_RUN_ID, os.environ["TORCHELASTIC_RUN_ID"] + "\n")
        restored = _resumed_state(ctx) if resume else None
        if restored is not None:
            done = _finished(ctx, restored)
            if done is not None:
                return done
        state = restored or RunState()
        if ctx.dist.is_main:
            _write_run_folder(ctx, state, resume)
        tb, tb_steps = _open_tensorboard(ctx, state)
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


def _agree_on_restart(ctx: Context, sees_run: bool) -> bool:
    """After a torchrun restart, whether to resume: rank 0's view of the run folder decides (other
    nodes may not share its disk); a collective."""
    views = distributed.all_gather_object(sees_run)
    if any(views) and not views[0]:
        raise UserError(f"torchrun restarted the workers and rank 0, now on another node, does not see this job's "
                        f"run in {ctx.out}; restarts on several nodes need the run folder on shared storage")
    if views[0]:
        ctx.log(f"torchrun restarted the workers (restart {distributed.restart_count()}): resuming this job's run "
                f"in {ctx.out} from its latest checkpoint")
    return bool(views[0])


def _resumed_state(ctx: Context) -> RunState | None:
    """Model, optimizer, schedule and RNGs restored from the latest readable checkpoint; returns
    where the run is (None: no checkpoint yet). A collective."""
    d, last = _load_latest(ctx, ctx.out)
    if d is None:
        ctx.log(f"no checkpoint in {ctx.out}; starting from the beginning")
        return None
    state = restore(ctx, d, last)  # type: ignore[arg-type]
    ctx.log(f"resumed from {last} (epoch {state.epoch + 1}, batch {state.batch_in_epoch}, step {state.global_step})")
    return state


def _write_run_folder(ctx: Context, state: RunState, resume: bool) -> None:
    """Rank 0: the run folder as this process starts (the config, the environment; on resume, the
    metrics of epochs the checkpoint has not seen are dropped)."""
    ckpt.remove_stale_temporaries(ctx.out)
    if resume:
        truncate_metrics(ctx.out, state.epoch)
    save_yaml(ctx.cfg, ctx.out / "config.yaml")
    atomic_write_text(ctx.out / "environment.json", json.dumps(environment(), indent=1) + "\n")


def _load_latest(ctx: Context, out: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The newest readable checkpoint of ``out`` (a collective: every rank calls it). A damaged
    newer one (a disk that filled, a copy cut short) is set aside as ``*.damaged``, so that it is
    never taken for the latest again, and the previous one is used; both are said."""
    names = [str(p) for p in reversed(ckpt.list_checkpoints(out))] if ctx.dist.is_main else []
    names = distributed.broadcast_object(names)
    for i, name in enumerate(names):
        try:
            return _load_for_resume(ctx, Path(name)), Path(name)
        except ckpt.CheckpointError as e:
            if i + 1 == len(names):
                raise ckpt.CheckpointError(f"{e}; no earlier checkpoint to fall back to" if i == 0 else
                                           f"{e}; no earlier checkpoint is readable either") from None
            if ctx.dist.is_main:
                os.replace(name, name + ".damaged")
            ctx.log(f"warning: {e}; set aside as {name}.damaged; resuming from the previous checkpoint {names[i + 1]}")
    return None, None


def _finished(ctx: Context, state: RunState) -> dict[str, Any] | None:
    """A resumed run whose checkpoint is at or past the last epoch: its summary when it is complete
    (nothing is trained or rewritten), None when only the final weights are missing (the loop then
    writes them), and an error when the checkpoint is past ``epochs``."""
    cfg, out = ctx.cfg, ctx.out
    if state.epoch > cfg.epochs:
        raise UserError(f"{out}: its latest checkpoint ends epoch {state.epoch}, past epochs={cfg.epochs}; nothing to "
                        f"train and nothing changed (to train longer, give --epochs above {state.epoch})")
    summary = None
    if ctx.dist.is_main and state.epoch == cfg.epochs and (out / ckpt.WEIGHTS).is_file():
        try:
            summary = json.loads((out / "summary.json").read_text())
        except (OSError, ValueError):
            pass  # the final weights are there but not the summary: the loop writes both again
    summary = distributed.broadcast_object(summary)
    if summary is None:
        return None
    ctx.log(f"{out}: already finished ({state.epoch} of {cfg.epochs} epochs); nothing to do "
            f"(to train longer, give --epochs above {cfg.epochs})")
    return summary


def _loop(ctx: Context, state: RunState) -> dict[str, Any]:
    cfg, log = ctx.cfg, ctx.log
    n_params = sum(p.numel() for p in ckpt.unwrap(ctx.model).parameters())
    placement = f"devices {', '.join(map(str, ctx.devices))} (§3.2 split)" if cfg.model_parallel == 2 else f"device {ctx.prec.device}"
    log(f"training {cfg.model} ({n_params:,} parameters) on {cfg.data}: {len(ctx.train_ds):,} train / {len(ctx.val_ds):,} val "
        f"images, {ctx.train_ds.num_classes} classes, {cfg.epochs} epochs of {len(ctx.train_loader)} batches of "
        f"{cfg.batch_size}" + (f" ({ctx.dist.world_size} processes)" if ctx.dist.enabled else "")
        + f", recipe {cfg.recipe}, {placement}")
    log(describe_augmentation(cfg, ctx.train_ds.image_size, ctx.augment.crop))
    t_start = time.time()
    checkpointer = Checkpointer(ctx, t_start)
    # A resumed run that had finished training but not written its final weights (a full disk)
    # reports its last epoch's row.
    row: dict[str, Any] = _last_metrics(ctx.out) if state.epoch >= cfg.epochs else {}
    with stop_on_signals(ctx.dist) as stop:
        while state.epoch < cfg.epochs:
            lr = ctx.schedule.lr_at(state.global_step - state.batch_in_epoch)  # the epoch's first step, also on resume
            tr, stopped = train_one_epoch(ctx, state, stop, checkpointer)
            if stopped:
                raise Interrupted(stop.exit_code(), checkpointer.write(state))
            val: dict[str, float] = {}
            if (state.epoch + 1) % cfg.eval_every == 0 or state.epoch + 1 == cfg.epochs:
                stop.evaluating = True
                try:
                    val = validate(ctx, cfg.ten_crop)
                except _StopEvaluation:
                    # The epoch's training is complete (batch_in_epoch = its length): the resumed
                    # run goes straight to this evaluation.
                    stop.evaluating = False
                    raise Interrupted(stop.exit_code(), checkpointer.write(state)) from None
                stop.evaluating = False
            dropped = ctx.schedule.end_of_epoch(val.get("val_select_top1_err" if cfg.plateau_on == "select" else "val_top1_err"))
            row = {"epoch": state.epoch + 1, "lr": lr, **tr, **val, "step": state.global_step,
                   "time_s": state.elapsed_s + time.time() - t_start}
            append_metrics(ctx, row)
            log(f"epoch {state.epoch + 1:3d}/{cfg.epochs}  loss {tr['train_loss']:.3f}  train err {tr['train_top1_err']:.3f}"
                + (f"  val top-1 {val['val_top1_err']:.3f}  top-5 {val['val_top5_err']:.3f}" if val else "")
                + f"  lr {lr:.2g}  {tr['img_per_s']:.0f} img/s" + ("  (lr / 10)" if dropped else ""))
            state.next_epoch()
            path = checkpointer.write(state)
            if _agree(ctx, bool(stop.signum)) and state.epoch < cfg.epochs:
                raise Interrupted(stop.exit_code(), path)
    if ctx.dist.is_main:
        ckpt.save_weights(ctx.model, ctx.out / ckpt.WEIGHTS, final_meta(ctx, row), ctx.train_ds.stats())
    summary = {"epochs": cfg.epochs, "steps": state.global_step, "final": row, "time_s": state.elapsed_s + time.time() - t_start,
               "weights": str(ctx.out / ckpt.WEIGHTS)}
    if ctx.dist.is_main:
        atomic_write_text(ctx.out / "summary.json", json.dumps(summary, indent=1) + "\n")
    distributed.barrier()  # nobody tears the process group down while rank 0 still writes
    return summary
