"""The resume protocol: where a run is (:class:`RunState`), what a checkpoint holds and who writes
it (:class:`Checkpointer`), how a run comes back (:func:`resumed_state`: the latest readable
checkpoint, a damaged one set aside; :func:`restore`: model, optimizer, schedule, scaler and every
process's RNG states), when it is already done (:func:`finished`), and which config a ``--resume``
continues with (:func:`saved_config`).

A checkpoint (every ``save_every`` steps and at every epoch end) holds the model, the optimizer,
the schedule and its plateau state, the step, the epoch, the position in the epoch with the
epoch's running loss/error sums, every process's RNG states and the config. Everything else is a
pure function of (seed, epoch, sample index): the shuffle
(:func:`alexnet.data.loader.epoch_permutation`) and the augmentation (:mod:`alexnet.data.augment`).
So a run killed at any moment and resumed ends with the same weights, bit for bit on the CPU, as
one that was never stopped. A checkpoint resumes on any number of processes that divides its
global batch (the position counts global batches of one global shuffle).

The functions that take a :class:`~alexnet.engine.train.Context` are collectives under torchrun:
every rank calls them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from alexnet.engine import checkpoint as ckpt
from alexnet.engine import distributed, run_folder
from alexnet.engine.checks import same_classes
from alexnet.errors import UserError

if TYPE_CHECKING:  # the loop's context, read here by attribute: no import at run time
    from alexnet.engine.train import Context


class TrainingDiverged(UserError):
    """A non-finite loss: the run stops; the last good checkpoint stays intact."""


def diverged(ctx: Context, global_step: int, epoch: int, what: str) -> TrainingDiverged:
    """The error that stops a diverged run, naming the last good checkpoint (never overwritten)."""
    last = ckpt.latest_checkpoint(ctx.out)
    where = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
    return TrainingDiverged(
        f"{what} at step {global_step} (epoch {epoch + 1}); training diverged — lower the learning rate "
        f"(now {ctx.optimizer.param_groups[0]['lr']:g}); {where}"
    )


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


# -- RNG states ---------------------------------------------------------------------------------------


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


# -- writing checkpoints ------------------------------------------------------------------------------


def checkpoint_state(ctx: Context, state: RunState, elapsed_s: float, rngs: list[dict[str, Any]],
                     epoch_time_s: float | None = None, model: dict[str, Any] | None = None,
                     optimizer: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint holds; ``elapsed_s``: the run's training wall time up to now;
    ``epoch_time_s``, when given: the epoch's time up to now (else ``state``'s); ``model`` and
    ``optimizer``: their state_dicts when already gathered (else taken here)."""
    run = {**state.to_dict(), "elapsed_s": elapsed_s}
    if epoch_time_s is not None:
        run["epoch_time_s"] = epoch_time_s
    return {
        "model": ckpt.model_state_dict(ctx.model) if model is None else model,  # the single-device layout, whatever the placement
        "optimizer": ckpt.optimizer_state_dict(ctx.optimizer) if optimizer is None else optimizer,
        "schedule": ctx.schedule.state_dict(),
        "run": run,
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

    def write(self, state: RunState, epoch_time_s: float | None = None) -> Path | None:
        """Every rank calls this: the RNG states are gathered, rank 0 writes, everyone learns the
        outcome (a failed write raises the same error on every rank instead of leaving the others
        waiting). ``epoch_time_s``: the epoch's time so far, for a checkpoint inside an epoch
        (``state`` holds the time before this process until the epoch ends)."""
        ctx = self.ctx
        if self.last is not None and self.last[0] == state.global_step and state.batch_in_epoch > 0:
            return self.last[1]  # this very state is already on disk
        # Every rank: FC layers sharded by parallel=owt are gathered here (collectives), so every
        # rank judges the same full weights.
        model_sd, optim_sd = ckpt.model_state_dict(ctx.model), ckpt.optimizer_state_dict(ctx.optimizer)
        if not all(bool(torch.isfinite(v).all()) for v in model_sd.values() if v.is_floating_point()):
            # Never let bad weights rotate the last good checkpoint out.
            raise diverged(ctx, state.global_step, state.epoch, "the weights became non-finite")
        rngs = distributed.all_gather_object(rng_state(ctx.devices))
        result: tuple[str | None, str | None] = (None, None)
        if ctx.dist.is_main:
            try:
                d = checkpoint_state(ctx, state, state.elapsed_s + (time.time() - self.t_start), rngs, epoch_time_s,
                                     model_sd, optim_sd)
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


# -- reading them back -------------------------------------------------------------------------------


def resumed_state(ctx: Context) -> RunState | None:
    """Model, optimizer, schedule and RNGs restored from the latest readable checkpoint; returns
    where the run is (None: no checkpoint yet). A collective."""
    d, last = _load_latest(ctx, ctx.out)
    if d is None:
        ctx.log(f"no checkpoint in {ctx.out}; starting from the beginning")
        return None
    state = restore(ctx, d, last)  # type: ignore[arg-type]
    ctx.log(f"resumed from {last} (epoch {state.epoch + 1}, batch {state.batch_in_epoch}, step {state.global_step})")
    return state


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
    """The model, optimizer, schedule, scaler and RNGs of ``ctx`` set from the checkpoint ``d`` (read
    from ``path``); returns where the run was. A checkpoint of another model, config or class list
    is a one-line error naming ``path``."""
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
        ckpt.load_optimizer_state_dict(ctx.optimizer, d["optimizer"])
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


def finished(ctx: Context, state: RunState) -> dict[str, Any] | None:
    """A resumed run whose checkpoint is at or past the last epoch: its summary when it is complete
    (nothing is trained or rewritten), None when only the final weights are missing (the loop then
    writes them), and an error when the checkpoint is past ``epochs``."""
    cfg, out = ctx.cfg, ctx.out
    if state.epoch > cfg.epochs:
        raise UserError(f"{out}: its latest checkpoint ends epoch {state.epoch}, past epochs={cfg.epochs}; nothing to "
                        f"train and nothing changed (to train longer, give --epochs above {state.epoch})")
    summary = None
    if ctx.dist.is_main and state.epoch == cfg.epochs and (out / run_folder.WEIGHTS).is_file():
        try:
            summary = run_folder.read_summary(out)
        except (OSError, ValueError):
            pass  # the final weights are there but not the summary: the loop writes both again
    summary = distributed.broadcast_object(summary)
    if summary is None:
        return None
    ctx.log(f"{out}: already finished ({state.epoch} of {cfg.epochs} epochs); nothing to do "
            f"(to train longer, give --epochs above {cfg.epochs})")
    return summary


# -- which config a --resume continues with ---------------------------------------------------------


def saved_config(out: Path, *, recipe_given: bool, warn: Callable[[str], None]) -> tuple[dict[str, Any], str] | None:
    """``--resume`` of the run in ``out``: the saved config it continues with and where it came
    from (RUN/config.yaml, or, in a folder that lost it, the config every checkpoint carries; that
    is said through ``warn``), or None with ``recipe_given`` (the recipe is the base then). A
    folder with neither a config nor a checkpoint is refused: never a silent fresh default run in
    a mistyped or empty folder."""
    last = ckpt.latest_checkpoint(out)
    if not run_folder.has_config(out) and last is None:
        what = "no such folder" if not out.exists() else "no config.yaml and no checkpoint"
        raise UserError(f"nothing to resume in {out} ({what}); to start a new run, leave out --resume")
    if recipe_given:
        return None
    if run_folder.has_config(out):
        return run_folder.read_config(out), str(out / run_folder.CONFIG)
    assert last is not None
    d = ckpt.load_checkpoint(last).get("config")
    if not isinstance(d, dict):
        raise UserError(f"{last}: holds no training config; pass --recipe and the options the run was started with")
    warn(f"{out}/{run_folder.CONFIG} is missing; using the config saved in {last}")
    return d, f"{last} (its config)"
