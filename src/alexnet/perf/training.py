"""``alexnet train`` itself, timed: the engine's :func:`alexnet.engine.train.run` with its loader,
logging, checkpoints and evaluation, on a prepared dataset, for a warm-up epoch (compilation, cuDNN's
autotuning, the workers' start) and a timed one. The numbers are those the run wrote to its
metrics.jsonl: what a user of the command gets."""

from __future__ import annotations

import re
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch

from alexnet import config
from alexnet.config import TrainConfig
from alexnet.engine.device import is_cuda
from alexnet.engine import run_folder, train
from alexnet.perf.steps import LR


def train_config(data: str | Path, *, device: str, batch: int, workers: int, decode: str, amp: str, channels_last: bool,
                 compile: bool, save_every: int, model: str = "alexnet", max_steps_per_epoch: int = 0) -> TrainConfig:
    """The paper's recipe (its update, schedule and augmentation) with the speed switches, for two
    epochs: the first warms up, the second is timed. ``save_every``: steps between checkpoints
    (the epoch ends write one too); ``max_steps_per_epoch`` > 0 shortens the epochs (smoke runs).
    The learning rate is the benchmarks' (:data:`LR`): the timing fixtures' labels are arbitrary,
    and the paper's 0.01 diverges on them."""
    return config.resolve("paper", {"model": model, "data": str(data), "epochs": 2, "batch_size": batch, "lr": LR,
                                    "workers": workers, "decode": decode, "device": device, "amp": amp,
                                    "channels_last": channels_last, "compile": compile, "save_every": save_every,
                                    "eval_every": 1, "progress": False, "max_steps_per_epoch": max_steps_per_epoch},
                          cuda=is_cuda)


def timed_run(cfg: TrainConfig, out: Path, log: Callable[[str], None] = print, *,
              count_syncs: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (two or more epochs) into the new run folder ``out``; the last epoch's numbers.

    ``img_per_s``: the epoch's training throughput as ``alexnet train`` reports it (the loop from
    its first batch to its last, mid-epoch checkpoints included); ``epoch_wall_s``: the epoch from
    the end of the previous one, its evaluation, checkpoint and metrics row included, and
    ``img_per_s_epoch_wall`` the training images over that.

    ``count_syncs`` (CUDA): from the previous epoch's summary line on, every operation that makes
    the host wait for the GPU is counted by the line of code that called it
    (``torch.cuda.set_sync_debug_mode("warn")``): ``host_syncs_last_epoch``. A line whose count
    reaches the number of steps would be a synchronisation in every step."""
    if cfg.epochs < 2:
        raise ValueError("a timed run needs a warm-up epoch before the timed one")
    last = re.compile(rf"epoch\s+{cfg.epochs - 1}/{cfg.epochs}\b")

    def logged(line: str) -> None:
        log(line)
        if count_syncs and last.match(line):
            torch.cuda.set_sync_debug_mode("warn")

    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = train.run(cfg, out, log=logged)
        finally:
            if count_syncs:
                torch.cuda.set_sync_debug_mode("default")
    wall = time.perf_counter() - t
    syncs: Counter[str] = Counter()
    for w in caught:
        if "synchronizing CUDA operation" in str(w.message):
            syncs[f"{'/'.join(Path(w.filename).parts[-2:])}:{w.lineno}"] += 1
        else:  # anything else is shown as it would have been
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    rows = run_folder.read_metrics(out)
    warm, timed = rows[-2], rows[-1]
    epoch_wall = timed["time_s"] - warm["time_s"]
    return {"img_per_s": round(timed["img_per_s"], 1), "epoch_time_s": round(timed["epoch_time_s"], 2),
            "epoch_wall_s": round(epoch_wall, 2), "img_per_s_epoch_wall": round(timed["train_images"] / epoch_wall, 1),
            "train_images_per_epoch": timed["train_images"], "val_images": timed.get("val_images"),
            "steps_per_epoch": summary["steps"] // cfg.epochs, "first_epoch_s": round(rows[0]["time_s"], 1),
            "run_wall_s": round(wall, 1), "final_train_loss": round(timed["train_loss"], 4),
            "save_every": cfg.save_every,
            **({"host_syncs_last_epoch": dict(syncs.most_common()), "host_syncs_last_epoch_total": sum(syncs.values())}
               if count_syncs else {})}


__all__ = ["timed_run", "train_config"]
