"""Process-group helpers for ``torchrun``. Without torchrun everything here is a single-process no-op.

Single node:   torchrun --standalone --nproc_per_node=G -m alexnet train ...
Several nodes: torchrun --nnodes=N --nproc_per_node=G --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT \\
                   --rdzv_id=JOB -m alexnet train ...
torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the process group is
initialised from them (``env://``) with NCCL on GPUs and gloo on CPUs. With ``--max-restarts N``
torchrun restarts every worker after a failure (TORCHELASTIC_RESTART_COUNT counts the restarts);
``alexnet train`` then resumes from the run's latest checkpoint.

Besides the collectives themselves, the decisions the training processes must share live here:
whether any process asked to stop (:func:`sum_and_any`, riding in the loss all-reduce, and
:func:`agree`), whether every process trains rank 0's config (:func:`check_same_config`), whether
restarted workers resume (:func:`agree_on_restart`), and DDP's gradient compression
(:func:`register_comm_hook`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from alexnet.config import LOCAL_FIELDS, TrainConfig
from alexnet.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_env() -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return DistInfo(int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", world)))


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def restart_count() -> int:
    """How many times torchrun's elastic agent has restarted this job's workers (``--max-restarts``):
    0 on the first attempt and outside torchrun."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def init(info: DistInfo, device: torch.device) -> None:
    if info.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL and the *_object collectives use the current device
        backend = "nccl" if device.type == "cuda" else "gloo"
        # torchrun's agent serves one store to every attempt of a job: after a restart, the keys the
        # failed attempt's processes left there (each rank's gloo address) would be read as this
        # attempt's, and a restarted rank would connect to a dead peer ("Connection refused"). A
        # prefix per attempt keeps the attempts apart.
        store, rank, world_size = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"alexnet/attempt-{restart_count()}", store)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def shutdown() -> None:
    if is_initialized():
        # Every rank reaches this point before any tears its gloo connections down: a rank that
        # destroys its group while a peer still talks to it makes the peer's gloo thread abort
        # ("terminate called without an active exception", SIGABRT at exit).
        try:
            dist.barrier()
        except Exception:  # a peer already gone (a crash elsewhere): nothing left to wait for
            pass
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def sum_and_any(rows: torch.Tensor, flag: bool) -> tuple[torch.Tensor, bool]:
    """``rows`` (k×n, float64) summed over the processes, read to the host, and whether any
    process raised ``flag``: one all-reduce (the flag rides in an extra row), so a stop request
    costs the training loop no collective of its own."""
    if not is_initialized():
        return rows.cpu(), flag
    extra = rows.new_zeros((1, rows.shape[1]))
    if flag:
        extra[0, 0] = 1.0
    block = all_reduce_sum(torch.cat([rows, extra])).cpu()
    return block[:-1], bool(block[-1, 0] > 0)


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled between our own processes only)."""
    if is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def rank_seed(seed: int, rank: int, step: int | None = None) -> int:
    """The torch RNG seed of one process after model initialisation: different per rank (each
    process draws its own dropout masks) and a pure function of (seed, rank), so a run is
    reproducible for a given world size. With ``step``: the seed of a run resumed at another
    world size from the checkpoint of that step (the saved per-rank states no longer map onto
    the processes)."""
    key = [seed, rank, 0xD0D0] if step is None else [seed, rank, step, 0xD0D1]
    return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> 1)


# -- DDP's gradient all-reduce ----------------------------------------------------------------------


COMM_HOOKS = {"bf16": "bf16_compress_hook", "fp16": "fp16_compress_hook"}


def register_comm_hook(name: str, model: torch.nn.Module, log: Callable[[str], None]) -> None:
    """``ddp_comm_hook`` ``name``: DDP all-reduces the gradients in bf16/fp16 instead of fp32 (half the
    bytes on the wire; each process's fp32 gradient is divided by the world size, rounded, summed
    in that dtype and cast back). Opt-in: it changes the numbers, and it only pays where the
    all-reduce is bandwidth-bound (several nodes on a slow network); see configs/fast.yaml."""
    if name == "none":
        return
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        log(f"warning: ddp_comm_hook={name} has no effect in a single process (it compresses the gradient "
            f"all-reduce between torchrun processes)")
        return
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    hook = COMM_HOOKS[name]
    model.register_comm_hook(None, getattr(default_hooks, hook))
    log(f"gradient all-reduce in {name} ({hook})")


# -- decisions every process must share ---------------------------------------------------------------


def agree(flag: bool, device: torch.device) -> bool:
    """Whether any process raised ``flag`` (a stop request; a collective: every rank calls it at the
    same step, with a tensor on its own ``device``)."""
    if not is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=device)
    return bool(all_reduce_sum(t).item() > 0)


def agree_on_restart(sees_run: bool, out: Path, log: Callable[[str], None]) -> bool:
    """After a torchrun restart, whether to resume: rank 0's view of the run folder decides (other
    nodes may not share its disk); a collective."""
    views = all_gather_object(sees_run)
    if any(views) and not views[0]:
        raise UserError(f"torchrun restarted the workers and rank 0, now on another node, does not see this job's "
                        f"run in {out}; restarts on several nodes need the run folder on shared storage")
    if views[0]:
        log(f"torchrun restarted the workers (restart {restart_count()}): resuming this job's run in {out} from its "
            f"latest checkpoint")
    return bool(views[0])


def check_same_config(cfg: TrainConfig) -> None:
    """Every process must train the same config (on ``--resume`` each node reads RUN/config.yaml
    from its own disk): rank 0's is broadcast, each process compares its own with it, and a
    mismatch stops every process with the same one-line error (a collective: all ranks call it)."""
    if not is_initialized():
        return
    mine = {k: v for k, v in cfg.to_dict().items() if k not in LOCAL_FIELDS}
    ref = broadcast_object(mine)
    diff = next(((k, mine.get(k), ref.get(k)) for k in sorted(set(mine) | set(ref)) if mine.get(k) != ref.get(k)), None)
    diffs = all_gather_object(diff)
    bad = [(r, d) for r, d in enumerate(diffs) if d is not None]
    if bad:
        r, (k, v, v0) = bad[0]
        raise UserError(f"the processes do not agree on the config: rank {r} has {k}={v!r}, rank 0 has {k}={v0!r}; every "
                        f"node needs the same RUN/config.yaml (on --resume) or the same recipe and options")
