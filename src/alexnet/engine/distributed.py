"""Process-group helpers for ``torchrun``. Without torchrun everything here is a single-process no-op.

Single node:   torchrun --standalone --nproc_per_node=G -m alexnet train ...
Several nodes: torchrun --nnodes=N --nproc_per_node=G --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT \\
                   --rdzv_id=JOB -m alexnet train ...
torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the process group is
initialised from them (``env://``) with NCCL on GPUs and gloo on CPUs. With ``--max-restarts N``
torchrun restarts every worker after a failure (TORCHELASTIC_RESTART_COUNT counts the restarts);
``alexnet train`` then resumes from the run's latest checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


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
