"""Bytes that a training step hands to collectives, measured on the tensors actually passed
(``benchmarks/comm_bytes.py``, ``tests/test_owt.py``): DDP's gradient all-reduce against
``parallel=owt``'s activation exchange (:mod:`alexnet.engine.owt`).

Two sources, both the tensors themselves, never sizes assumed from the model:

* DDP's buckets: a comm hook (:func:`count_ddp`) records each bucket's buffer and then runs
  torch's own ``allreduce_hook``, so DDP's numbers are unchanged.
* DTensor's redistributions (the tensor-parallel FC layers, forward and backward): a dispatch mode
  (:class:`CommCounter`) records the input of every functional collective
  (``torch.ops._c10d_functional``), the ops DTensor lowers its redistributions to.

"Payload" is the bytes of the tensor one process passes in; what it sends on the wire then follows
from the collective's algorithm over K processes (:func:`sent_bytes`: ring all-reduce 2(K-1)/K of
the buffer, ring all-gather K-1 copies of its shard, reduce-scatter and all-to-all (K-1)/K of
their input).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["CommCounter", "count_ddp", "expected_owt_payloads", "sent_bytes"]

# the functional collectives DTensor's redistribute calls, by the name the counter reports
_FUNCTIONAL = {"all_gather_into_tensor": "all_gather", "reduce_scatter_tensor": "reduce_scatter",
               "all_to_all_single": "all_to_all", "all_reduce": "all_reduce", "broadcast": "broadcast"}


class CommCounter(TorchDispatchMode):
    """``with CommCounter() as c: step()``: ``c.calls`` is a list of (collective, payload bytes)
    in issue order, DTensor's collectives and (with :func:`count_ddp`) DDP's bucket all-reduces;
    :meth:`totals` sums them by collective."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        ns, name = func.namespace, func._schema.name.split("::")[-1]
        if ns == "_c10d_functional" and name in _FUNCTIONAL:
            t = args[0]
            self.calls.append((_FUNCTIONAL[name], t.numel() * t.element_size()))
        return func(*args, **(kwargs or {}))

    def record(self, collective: str, nbytes: int) -> None:
        self.calls.append((collective, int(nbytes)))

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for name, n in self.calls:
            out[name] += n
        return dict(out)

    def clear(self) -> None:
        self.calls.clear()


def count_ddp(model: nn.Module, counter: CommCounter) -> None:
    """Register on the DDP ``model`` a comm hook that records every bucket's all-reduce payload in
    ``counter`` ("ddp_all_reduce") and then all-reduces it as DDP does by default."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    def hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks real annotations; these would be strings
        buf = bucket.buffer()
        counter.record("ddp_all_reduce", buf.numel() * buf.element_size())
        return default_hooks.allreduce_hook(state, bucket)

    model.register_comm_hook(None, hook)  # type: ignore[operator]


def sent_bytes(totals: dict[str, int], world_size: int) -> int:
    """What one process sends for these payloads (:meth:`CommCounter.totals`) over ``world_size``
    processes, with the usual algorithms: ring all-reduce 2(K-1)/K of its buffer, ring all-gather
    its shard to K-1 peers, reduce-scatter and all-to-all (K-1)/K of their input."""
    k = world_size
    factor = {"ddp_all_reduce": 2 * (k - 1) / k, "all_reduce": 2 * (k - 1) / k, "all_gather": k - 1,
              "reduce_scatter": (k - 1) / k, "all_to_all": (k - 1) / k, "broadcast": 1.0}
    return round(sum(n * factor[name] for name, n in totals.items()))


def expected_owt_payloads(fcs: list[tuple[int, int]], trunk_params: int, batch: int, world_size: int,
                          nbytes: int = 4) -> dict[str, int]:
    """The payload per process and step of ``parallel=owt``'s plan (:func:`alexnet.engine.owt.plan`)
    for FC layers of (inputs, outputs) ``fcs``, a trunk of ``trunk_params`` parameters, a global
    ``batch`` over ``world_size`` processes, ``nbytes`` per number. Column-wise layers gather their
    input (B/K rows from each process) and reduce-scatter its gradient (B rows); row-wise layers
    reduce-scatter their partial output (B rows) and gather its gradient (B/K rows); the last layer
    hands each process its own images' logits (B × C/K in) and takes their gradient back (B/K × C),
    counted here as all-gathers: gloo has no all-to-all and DTensor then all-gathers (over NCCL the
    same payload goes to ``all_to_all``). DDP all-reduces the trunk's gradients, and those of a
    last layer whose classes do not split over the processes (it stays data-parallel)."""
    b, k = batch, world_size
    gathered = scattered = 0
    reduced = trunk_params
    for i, (n_in, n_out) in enumerate(fcs):
        if i == len(fcs) - 1 and i % 2 == 0 and i > 0 and n_out % k:
            reduced += n_in * n_out + n_out
            break
        if i % 2 == 0:
            gathered += b // k * n_in
            scattered += b * n_in
        else:
            scattered += b * n_out
            gathered += b // k * n_out
        if i == len(fcs) - 1:
            n_last = n_out if i % 2 == 0 else 0  # a row-wise last layer already ends on this process's rows
            gathered += b * n_last // k + b // k * n_last
    return {"ddp_all_reduce": nbytes * reduced, "all_gather": nbytes * gathered, "reduce_scatter": nbytes * scattered}
