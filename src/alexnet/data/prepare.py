"""``alexnet prepare``: any supported source -> the prepared format (:mod:`alexnet.data.format`).

Images are prepared as §2 of the paper prepares ImageNet: the shorter side is rescaled to 256
and the central 256×256 patch is cropped out (raw RGB otherwise; the per-pixel mean image is
computed over the training set). Datasets of small images (CIFAR, MNIST) keep their native size.
256×256 images are stored as JPEG (quality 90 by default, about 8× smaller than raw, and decoded
on the fly by the loader); small ones as raw uint8, which is both smaller than a JPEG's headers
and free to decode.

The work is a stream: the main process reads the source in order (tar members straight from
the archive, files by path, arrays from memory), worker processes decode, convert, resize,
encode and accumulate the statistics of chunks of it, and the main process appends the records
in order. Bad files never stop the run and are never dropped silently: every conversion (CMYK,
grayscale, palette, alpha, a PNG inside a .JPEG) and every skip (zero bytes, truncated, not an
image, a decompression bomb, an unsafe archive name) is listed with its reason in
``DIR/prepare_report.json`` and summarised at the end.

The modules it is made of: :mod:`alexnet.data.sources.detect` opens the source,
:mod:`alexnet.data.workers` does the per-image work (:mod:`alexnet.data.decode` decodes,
:func:`alexnet.data.jpeg.jpeg_bytes` encodes, :class:`alexnet.data.stats.StatsAccumulator` computes
the statistics), :class:`alexnet.signals.StopRequest` turns Ctrl-C into a checkpoint, and this
module runs the splits through them in order.

Writing is atomic and resumable (:class:`alexnet.data.writer.DatasetWriter` with a fingerprint):
everything goes to ``DIR.partial``, checkpointed every CHECKPOINT_SECONDS; an interrupted run
leaves no ``DIR`` that opens, and rerunning the same command continues from the last checkpoint
(a changed source or option starts clean).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter, deque
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from alexnet.data.format import ENCODINGS, FORMAT_VERSION
from alexnet.data.processes import usable_cpus
from alexnet.data.sources import synthetic
from alexnet.data.sources.base import CONVERTED, SKIPPED, Item, Source
from alexnet.data.sources.detect import open_source, uniform_small_size
from alexnet.data.stats import PIXELS_PER_IMAGE, STATS_SEED, StatsAccumulator
from alexnet.data.workers import Executor, Spec
from alexnet.data.writer import DatasetWriter, check_destination, lock_dataset
from alexnet.errors import Terminated, UserError
from alexnet.files import os_error_line
from alexnet.progress import Progress
from alexnet.signals import StopRequest

DEFAULT_SIZE = 256  # §2: "rescaled the image such that the shorter side was of length 256"
SMALL = 64  # images no larger than this (either side) are stored raw by default
CHECKPOINT_SECONDS = 60.0
CHUNK = 64  # images per job sent to a worker (the statistics sums travel back once per chunk)
INLINE_CHUNK = 256  # images per job without workers


def _reason(codes: Sequence[str], detail: str) -> str:
    text = "; ".join(CONVERTED.get(c) or SKIPPED.get(c, c) for c in codes)
    return f"{text} ({detail})" if detail else text


def summarize(report: Mapping[str, Any]) -> str:
    """The on-screen summary of a prepare report."""
    lines = []
    for key, verb in (("converted", "converted"), ("skipped", "skipped")):
        entries = report.get(key, [])
        if entries:
            by = Counter(c for e in entries for c in e["codes"])
            table = CONVERTED if key == "converted" else SKIPPED
            parts = ", ".join(f"{n} {table.get(c, c)}" for c, n in by.most_common())
            lines.append(f"{verb} {len(entries)} file{'s' if len(entries) != 1 else ''}: {parts}")
    if not lines:
        lines.append("no file needed converting or skipping")
    return "\n".join(lines)


DEFAULT_QUALITY = 90  # JPEG quality of the stored images


def prepare(src: str | os.PathLike[str], out: str | os.PathLike[str], *, size: int | None = None,
            workers: int | None = None, fmt: str | None = None, quality: int | None = None, encoding: str | None = None,
            val_fraction: float | None = None, progress: bool = True,
            names: Mapping[str, str] | None = None, lock: Any = None) -> Path:
    """Prepare ``src`` into the dataset folder ``out`` and return ``out``.

    ``src``: the folder of the ILSVRC-2012 archives, an extracted ImageNet tree, an image-folder
    tree (folder or tar), CIFAR pickles (tar.gz or folder), a folder of IDX files, or
    ``"synthetic"``; ``fmt`` forces one of ``sources.detect.FORMATS``. ``size``: images are rescaled so the shorter
    side is ``size`` and centre-cropped to size×size (default 256; small-image datasets keep
    their native size unless ``size`` is given). ``encoding``: "jpeg" (at ``quality``) or "raw";
    by default raw for images of at most 64 pixels a side, JPEG above. ``workers``: decoding
    processes (default: one per CPU this process may run on). ``val_fraction``: for a tree without
    a val/ folder, the part of every class held out as ``val``. ``names``: class ->
    human-readable name overrides.
    ``lock``: the dataset's lock (:func:`~alexnet.data.writer.lock_dataset`) when the caller
    already holds it; otherwise it is taken here.
    """
    out = Path(out).expanduser()
    if size is not None and not 1 <= int(size) <= 8192:
        raise UserError(f"--size {size}: must be between 1 and 8192")
    if quality is not None and not 1 <= int(quality) <= 100:
        raise UserError(f"--quality {quality}: must be between 1 and 100")
    if quality is not None and encoding == "raw":
        raise UserError(f"--quality {quality} has no effect with --encoding raw (raw images are not compressed)")
    if encoding is not None and encoding not in ENCODINGS:
        raise UserError(f"--encoding {encoding}: accepted: {', '.join(ENCODINGS)}")
    if workers is not None and workers < 0:
        raise UserError(f"--workers {workers}: must be 0 or more")
    if fmt == "synthetic" or (fmt is None and str(src) == "synthetic" and not Path(src).exists()):
        if quality is not None or encoding is not None:
            raise UserError("--quality and --encoding have no effect on the synthetic data (its encoding follows its size)")
        return Path(synthetic.build(out, size=size) if size else synthetic.build(out))
    # Cheap refusals first: no source scan for a destination that cannot be written.
    check_destination(out)
    sp = Path(src).expanduser().resolve()
    if sp.is_dir() and (out.resolve() == sp or sp in out.resolve().parents):
        raise UserError(f"{out}: --out must not be inside the source folder {src}")

    # Held until the dataset is committed or this process ends: a second prepare into the same
    # --out is refused here, before it reads the source or touches OUT.partial.
    own = lock is None
    if own:
        lock = lock_dataset(out)
    try:
        source = open_source(src, fmt, val_fraction=val_fraction, names=names)
        try:
            return _prepare_source(source, out, size=size, workers=workers, quality=quality, encoding=encoding,
                                   progress=progress, lock=lock)
        finally:
            source.close()
    finally:
        if own:
            lock.release()


def _plan(source: Source, size: int | None, encoding: str | None) -> tuple[tuple[int, int], str, str]:
    native = source.native_size
    if native is None and size is None and source.kind == "folder":
        native = uniform_small_size(source, SMALL)
    if native is not None and size is None:
        target, how = native, "native size"
    else:
        s = int(size or DEFAULT_SIZE)
        target, how = (s, s), f"shorter side rescaled to {s}, central {s}×{s} crop (§2)"
    return target, encoding or ("raw" if max(target) <= SMALL else "jpeg"), how


def _prepare_source(source: Source, out: Path, *, size: int | None, workers: int | None, quality: int | None,
                    encoding: str | None, progress: bool, lock: Any = None) -> Path:
    target, enc, how = _plan(source, size, encoding)
    if quality is not None and enc == "raw":
        raise UserError(f"--quality {quality} has no effect: these {target[0]}×{target[1]} images are stored raw; "
                        f"pass --encoding jpeg to store them as JPEG")
    quality = DEFAULT_QUALITY if quality is None else quality
    nworkers = usable_cpus() if workers is None else max(1, workers)
    cheap = source.native_size is not None and target == source.native_size and enc == "raw"
    describe = {**source.describe(), "image_size": list(target), "encoding": enc, "preprocessing": how}
    if enc == "jpeg":
        describe["quality"] = quality
    fingerprint = {"source": source.fingerprint(), "size": list(target), "encoding": enc,
                   "quality": quality if enc == "jpeg" else None, "format_version": FORMAT_VERSION,
                   "pixels_per_image": PIXELS_PER_IMAGE, "stats_seed": STATS_SEED}
    report: dict[str, Any] = {"source": describe, "converted": [], "skipped": []}
    t0 = time.time()
    dw = DatasetWriter(out, source.classes, source.class_names, describe, fingerprint=fingerprint, lock=lock)
    if dw.resumed and progress:
        print(f"resuming the interrupted prepare in {dw.tmp}", file=sys.stderr)
    executor = Executor(1 if cheap else nworkers)
    ok = False
    try:
        stopping = "\nstopping after the current chunk (Ctrl-C again to stop now)" if progress else None
        with dw, StopRequest(stopping) as stop:
            for split in source.split_names:
                state = dw.resume_state(split)
                if dw.is_closed(split):
                    assert state is not None
                    report["converted"] += state[0].get("converted", [])
                    report["skipped"] += state[0].get("skipped", [])
                    continue
                _run_split(source, split, dw, Spec(target, enc, quality, stats=split == "train"), executor,
                           report, state, progress, cheap, stop)
            if stop.requested:  # after the last chunk: stop rather than commit (a signal is never lost)
                stop.stop()
            dw.report = {**report, "summary": {
                "converted": len(report["converted"]), "skipped": len(report["skipped"]),
                "by_reason": dict(Counter(c for k in ("converted", "skipped") for e in report[k] for c in e["codes"])),
                "splits": {k: v["count"] for k, v in dw.splits.items()}, "seconds": round(time.time() - t0, 1)}}
            dw.commit()
        ok = True
    except UserError:
        dw.abort()  # e.g. every training image was unusable: nothing worth resuming
        raise
    except (KeyboardInterrupt, Terminated):
        if progress:
            print(f"\ninterrupted: the work so far is kept in {dw.tmp}; rerun the same command to resume",
                  file=sys.stderr)
        raise
    except OSError as e:
        # A full disk (or any failed write): cut the partial dataset back to its last checkpoint,
        # which frees the space written since and is exactly what a rerun resumes from.
        kept = dw.keep_checkpointed()
        what = (f"the {kept} images prepared up to the last checkpoint are kept in {dw.tmp}: free space, then rerun "
                f"the same command to resume" if kept else f"nothing was checkpointed yet, {dw.tmp} was removed")
        raise UserError(f"{os_error_line(e, dw.tmp)}; {what}") from None
    finally:
        executor.close(ok)
    if progress:
        counts = ", ".join(f"{k} {v['count']}" for k, v in dw.splits.items())
        print(f"prepared {out}: {counts} images of {target[0]}×{target[1]} ({enc}), {len(source.classes)} classes, "
              f"{time.time() - t0:.0f} s", file=sys.stderr)
        print(summarize(report) + (f"; details in {out / 'prepare_report.json'}"
                                   if report["converted"] or report["skipped"] else ""), file=sys.stderr)
    return out


def _chunks(it: Iterator[tuple[Any, Item]], size: int) -> Iterator[list[tuple[Any, Item]]]:
    buf: list[tuple[Any, Item]] = []
    for x in it:
        buf.append(x)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _run_split(source: Source, split: str, dw: DatasetWriter, spec: Spec, executor: Executor,
               report: dict[str, Any], state: tuple[dict[str, Any], dict[str, np.ndarray]] | None,
               progress: bool, cheap: bool, stop: StopRequest | None = None) -> None:
    writer = dw.split(split, spec.encoding, spec.size)
    acc = StatsAccumulator(spec.size) if spec.stats else None  # sums of the workers' chunks
    st, arrays = state if state is not None else ({}, {})
    cursor = st.get("cursor")
    ordinal = int(st.get("ordinal", 0))
    converted: list[dict[str, Any]] = list(st.get("converted", []))
    skipped: list[dict[str, Any]] = list(st.get("skipped", []))
    if acc is not None and arrays:
        acc.load_state(arrays)
    total = source.count(split)
    if total is None:
        total = source.estimate(split)
    workers = executor.workers
    if cheap or workers == 1:
        chunk = INLINE_CHUNK
    else:  # about four chunks per worker on small datasets, so that all of them get work
        chunk = max(1, min(CHUNK, math.ceil((total or CHUNK * workers) / (workers * 4))))
    bar = Progress(total, f"{split:>5}", "img", initial=ordinal, enabled=progress, file=sys.stderr, smoothing=0.05)
    t_start, n_start = time.time(), ordinal
    last_ckpt = time.time()
    inflight: deque[tuple[Any, list[Item], int, Any]] = deque()

    def consume() -> None:
        nonlocal cursor, ordinal, last_ckpt
        last_cursor, items, ord0, fut = inflight.popleft()
        results, partial = fut.get()
        for it, (record, codes, detail) in zip(items, results):
            entry = {"split": split, "file": it.name, "name": PurePosixPath(it.name).name,
                     "codes": codes, "reason": _reason(codes, detail or it.detail)}
            if record is None:
                skipped.append(entry)
            else:
                writer.add(record, it.label)
                if codes:
                    converted.append(entry)
        if acc is not None and partial is not None:
            acc.add_sums(*partial)
        cursor, ordinal = last_cursor, ord0 + len(items)
        bar.update(len(items))
        rate = (ordinal - n_start) / max(time.time() - t_start, 1e-9)
        bar.set_postfix_str(f"{rate / workers:.0f} img/s/core, {len(skipped)} skipped, {len(converted)} converted",
                            refresh=False)
        stopping = stop is not None and stop.requested
        if stopping or time.time() - last_ckpt >= CHECKPOINT_SECONDS:
            dw.checkpoint(split, {"cursor": cursor, "ordinal": ordinal, "converted": converted, "skipped": skipped},
                          acc.state() if acc is not None else None)
            last_ckpt = time.time()
        if stopping:
            stop.stop()  # type: ignore[union-attr]

    try:
        next_ord = ordinal
        for group in _chunks(source.items(split, after=cursor), chunk):
            items = [it for _, it in group]
            job = (spec, next_ord, [(it.name, it.data, it.skip, it.detail) for it in items])
            inflight.append((group[-1][0], items, next_ord, executor.submit(job)))
            next_ord += len(items)
            while len(inflight) > 2 * workers or (inflight and workers == 1):
                consume()
        while inflight:
            consume()
        if bar.total != ordinal:  # the total was an estimate (the ImageNet training tar)
            bar.set_total(ordinal)
    finally:
        bar.close()
    if acc is not None:
        dw.write_stats(*acc.finish())
    dw.close_split(split, {"cursor": cursor, "ordinal": ordinal, "converted": converted, "skipped": skipped})
    report["converted"] += converted
    report["skipped"] += skipped
