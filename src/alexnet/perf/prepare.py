"""Throughput of ``prepare`` itself: images per second, per worker process, of its per-image work
(:mod:`alexnet.data.workers`, the same code and pool ``alexnet prepare`` runs)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

from alexnet.data.prepare import DEFAULT_SIZE
from alexnet.data.workers import Executor, Spec
from alexnet.perf.fixtures import photo_like_jpegs


def prepare_throughput(files: Sequence[str | os.PathLike[str]] | None = None, *, n: int = 256, workers: int = 1,
                       size: int = DEFAULT_SIZE, quality: int = 90, source_size: tuple[int, int] = (500, 375),
                       repeat: int = 1, seed: int = 0) -> dict[str, Any]:
    """Images per second (and per worker process) of prepare's per-image work: decode, convert,
    shorter side to ``size`` + central crop, JPEG encode at ``quality``, training statistics.

    ``files``: real images to time (read into memory first); default ``n`` photo-like
    ``source_size`` JPEGs. Reading the source from disk is not timed. Returns
    ``{"img_s", "img_s_per_core", "workers", "images", "mean_input_kb", "size", "quality", "source"}``.
    """
    payloads = [Path(f).read_bytes() for f in files] if files else photo_like_jpegs(n, source_size, seed=seed)
    names = [Path(f).name for f in files] if files else ["bench.JPEG"] * len(payloads)
    spec = Spec((size, size), "jpeg", quality, stats=True)
    items = [(nm, d, None, "") for nm, d in zip(names, payloads)] * max(1, repeat)
    workers = max(1, workers)
    chunk = max(1, min(64, math.ceil(len(items) / (workers * 4))))
    ex = Executor(workers)
    try:
        for f in [ex.submit((spec, 0, items[:1])) for _ in range(workers)]:  # warm up the workers
            f.get()
        t = time.perf_counter()
        futs = [ex.submit((spec, i, items[i:i + chunk])) for i in range(0, len(items), chunk)]
        done = sum(sum(r[0] is not None for r in f.get()[0]) for f in futs)
        dt = time.perf_counter() - t
    finally:
        ex.close()
    rate = len(items) / dt
    return {"img_s": rate, "img_s_per_core": rate / workers, "workers": workers, "images": len(items),
            "ok": done, "mean_input_kb": sum(map(len, payloads)) / len(payloads) / 1024, "size": size,
            "quality": quality, "source": "files" if files else f"photo-like {source_size[0]}×{source_size[1]} JPEGs"}
