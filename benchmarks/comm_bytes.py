"""Bytes per training step that each process hands to collectives: plain DDP against
``parallel=owt`` (Krizhevsky 2014's "one weird trick", :mod:`alexnet.engine.owt`), the same model
and global batch, measured on the tensors actually passed (:mod:`alexnet.perf.comm`).

    PYTHONPATH=src torchrun --standalone --nproc_per_node=2 benchmarks/comm_bytes.py [--batch 128] [--model alexnet]

Each layout takes two steps of :class:`alexnet.engine.fast_step.FastStep` (the step ``alexnet train``
runs, with the paper's update, on random input already cropped); the second is counted (DDP sorts
its buckets after the first). Rank 0 writes ``benchmarks/results/comm-bytes-<model>-b<B>-k<K>-<date>.json``
with, per layout, the payload per collective, what one process sends with the usual algorithms
(:func:`alexnet.perf.comm.sent_bytes`), and for owt the arithmetic of its plan beside the
measurement; plus the machine, versions, date and git SHA. Bytes do not depend on the machine:
gloo on the CPU counts what NCCL would carry, except the logits' exchange (an all-to-all over
NCCL, an all-gather of the same payload over gloo, which has none).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet import models
from alexnet.config import TrainConfig
from alexnet.engine import distributed, owt
from alexnet.engine.fast_step import FastStep
from alexnet.engine.optim import build_optimizer
from alexnet.environment import environment
from alexnet.perf.comm import CommCounter, count_ddp, expected_owt_payloads, sent_bytes
from alexnet.perf.results import results_path, write_results

ROOT = Path(__file__).resolve().parent


def measure(model: nn.Module, wrapped: nn.Module, batch: int, size: int, info: distributed.DistInfo) -> dict[str, Any]:
    """The payloads of the second of two steps of ``wrapped`` on this process's slice of ``batch``."""
    counter = CommCounter()
    count_ddp(wrapped, counter)
    optimizer = build_optimizer(TrainConfig(), model, 0.01)
    step = FastStep(wrapped, optimizer, None, "cpu", amp="none", channels_last=False)
    n = batch // info.world_size
    g = torch.Generator().manual_seed(info.rank)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 1000, (n,), generator=g)
    step(x, y, torch.arange(n), 0)
    counter.clear()
    with counter:
        step(x, y, torch.arange(n), 0)
    totals = counter.totals()
    return {"payload_bytes": totals, "payload_total": sum(totals.values()),
            "sent_bytes_per_process": sent_bytes(totals, info.world_size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128, help="global batch (default 128, §5)")
    ap.add_argument("--model", default="alexnet", help="a model with a classifier Sequential (default alexnet)")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    info = distributed.from_env()
    if not info.enabled:
        raise SystemExit("run under torchrun with 2 or more processes, e.g. torchrun --standalone --nproc_per_node=2 ...")
    torch.set_num_threads(1)
    distributed.init(info, torch.device("cpu"))
    torch.manual_seed(0)
    base = models.create(args.model, 1000)
    fcs = [(fc.in_features, fc.out_features) for _, fc in owt.fc_layers(base)]
    trunk = sum(p.numel() for n, p in base.named_parameters() if not n.startswith("classifier."))
    params = sum(p.numel() for p in base.parameters())

    plain = copy.deepcopy(base)
    size = models.info(args.model).input_size
    ddp = measure(plain, nn.parallel.DistributedDataParallel(plain), args.batch, size, info)
    split = copy.deepcopy(base)
    wrapped, _ = owt.parallelize(split, torch.device("cpu"), info.world_size)
    hybrid = measure(split, wrapped, args.batch, size, info)
    hybrid["arithmetic_bytes"] = expected_owt_payloads(fcs, trunk, args.batch, info.world_size)
    result = {"model": args.model, "parameters": params, "trunk_parameters": trunk, "fc_layers": fcs,
              "global_batch": args.batch, "world_size": info.world_size, "backend": "gloo", "ddp": ddp, "owt": hybrid,
              "owt_over_ddp_sent": hybrid["sent_bytes_per_process"] / ddp["sent_bytes_per_process"]}
    if info.is_main:
        env = environment()
        path = write_results(results_path(args.out, f"comm-bytes-{args.model}-b{args.batch}-k{info.world_size}", env), result, env)
        mb = 1e6
        print(f"{args.model}, global batch {args.batch}, {info.world_size} processes: sent per process and step "
              f"DDP {ddp['sent_bytes_per_process'] / mb:.1f} MB, owt {hybrid['sent_bytes_per_process'] / mb:.1f} MB "
              f"(payload {ddp['payload_total'] / mb:.1f} vs {hybrid['payload_total'] / mb:.1f} MB); {path}")
    distributed.shutdown()


if __name__ == "__main__":
    main()
