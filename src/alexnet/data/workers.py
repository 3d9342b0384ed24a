"""``prepare``'s per-image work and the processes that do it.

One item: decode -> RGB -> shorter side to S, central S×S crop (:mod:`alexnet.data.decode`) ->
a record (raw bytes, or a JPEG file from :func:`alexnet.data.jpeg.jpeg_bytes`). A chunk of items
also gives its training statistics sums (:class:`alexnet.data.stats.StatsAccumulator`, each
image seeded by its position in the split, so the sums do not depend on the chunking).
:class:`Executor` runs chunks in this process or in a pool of worker processes
(:mod:`alexnet.data.processes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from alexnet.data.decode import Skip, fit, load_image, read_file
from alexnet.data.processes import context, init_worker
from alexnet.data.stats import STATS_SEED, StatsAccumulator
from alexnet.data.writer import encode_record


@dataclass(frozen=True)
class Spec:
    """What the workers make of each item."""

    size: tuple[int, int]  # H, W of every stored image
    encoding: str
    quality: int = 90
    stats: bool = False  # accumulate the training statistics
    seed: int = STATS_SEED


def _prepare_one(item: tuple[str, Any, str | None, str], spec: Spec) -> tuple[np.ndarray, list[str], str]:
    """-> (H×W×3 uint8 pixels of ``spec.size``, conversion codes, detail)."""
    name, data, _, _ = item
    if isinstance(data, np.ndarray):
        arr = data if data.ndim == 3 else np.repeat(data[:, :, None], 3, axis=2)  # H×W -> H×W×3
        if arr.shape[:2] == spec.size:
            return np.ascontiguousarray(arr, dtype=np.uint8), [], ""
        return np.asarray(fit(Image.fromarray(arr), spec.size), dtype=np.uint8), [], ""
    if isinstance(data, str):
        data = read_file(data)
    im, codes, detail = load_image(data, name, spec.size)
    return np.asarray(im, dtype=np.uint8), codes, detail


Job = tuple[Spec, int, list[tuple[str, Any, "str | None", str]]]  # (spec, ordinal of the first item, items)
Result = tuple[list[tuple["bytes | None", list[str], str]], "tuple | None"]


def _process_chunk(job: Job) -> Result:
    """A chunk of items -> per item (record or None, codes, detail), and the chunk's statistics
    sums (StatsAccumulator.sums(); the pixel sum as uint32, exact for a chunk and half the bytes
    of float64 to send back)."""
    spec, ordinal0, items = job
    results: list[tuple[bytes | None, list[str], str]] = []
    acc = StatsAccumulator(spec.size, seed=spec.seed) if spec.stats else None
    for k, item in enumerate(items):
        if item[2] is not None:
            results.append((None, [item[2]], item[3]))
            continue
        try:
            arr, codes, detail = _prepare_one(item, spec)
            record = encode_record(arr, spec.encoding, spec.quality)
        except Skip as s:
            results.append((None, [s.code], s.detail))
            continue
        except Exception as e:  # never let one file stop hours of work
            results.append((None, ["unreadable"], f"{type(e).__name__}: {e}"))
            continue
        results.append((record, codes, detail))
        if acc is not None:
            acc.add(arr, ordinal0 + k)  # the item's position in the split, skipped items included
    if acc is None:
        return results, None
    pixel_sum, *rest = acc.sums()
    return results, (pixel_sum.astype(np.uint32), *rest)


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value

    def get(self) -> Any:
        return self.value


class Executor:
    """``submit(job)`` returns an object with ``get()``; ``workers <= 1`` runs jobs in place."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self.pool = None
        if self.workers > 1:
            self.pool = context().Pool(self.workers, initializer=init_worker)

    def submit(self, job: Any) -> Any:
        if self.pool is None:
            return _Done(_process_chunk(job))
        return self.pool.apply_async(_process_chunk, (job,))

    def close(self, ok: bool = True) -> None:
        if self.pool is not None:
            if ok:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
            self.pool = None
