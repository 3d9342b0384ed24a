"""``alexnet prepare``: any supported source -> the prepared format (alexnet.data.format).

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

Writing is atomic and resumable (format.DatasetWriter with a fingerprint): everything goes to
``DIR.partial``, checkpointed every CHECKPOINT_SECONDS; an interrupted run leaves no ``DIR`` that
opens, and rerunning the same command continues from the last checkpoint (a changed source or
option starts clean).
"""

from __future__ import annotations

import io
import math
import multiprocessing as mp
import os
import signal
import sys
import tarfile
import threading
import time
import warnings
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from alexnet.data.format import ENCODINGS, FORMAT_VERSION, DatasetWriter, StatsAccumulator, is_prepared, lock_dataset
from alexnet.data.sources.base import CONVERTED, IMAGE_MAGIC, SKIPPED, Item, Source, oversized
from alexnet.errors import Terminated, UserError
from alexnet.files import os_error_line
from alexnet.progress import Progress

FORMATS = ("imagenet", "imagenet-tree", "folder", "cifar", "idx", "synthetic")
DEFAULT_SIZE = 256  # §2: "rescaled the image such that the shorter side was of length 256"
SMALL = 64  # images no larger than this (either side) are stored raw by default
CHECKPOINT_SECONDS = 60.0
CHUNK = 64  # images per job sent to a worker (the statistics sums travel back once per chunk)
INLINE_CHUNK = 256  # images per job without workers
PIXELS_PER_IMAGE = 256  # pixels sampled per image for the RGB covariance (§4.1's PCA)
STATS_SEED = 0

_EXT_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP",
               ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}


# ---------------------------------------------------------------------------------------------
# One image: decode -> RGB -> shorter side to S, central S×S crop -> encode (runs in workers)


@dataclass(frozen=True)
class Spec:
    """What the workers make of each item."""

    size: tuple[int, int]  # H, W of every stored image
    encoding: str
    quality: int = 90
    stats: bool = False  # accumulate the training statistics
    seed: int = STATS_SEED


class Skip(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code, self.detail = code, detail


def fit(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Rescale so the image covers ``size`` (H, W) with its shorter side and crop the centre: for
    a square size, §2's "shorter side to 256, central 256×256 patch". One resize of just the
    central region (``box``) does both, without the rounding of a resize-then-crop."""
    th, tw = size
    w, h = im.size
    if (w, h) == (tw, th):
        return im
    scale = max(tw / w, th / h)
    cw, ch = tw / scale, th / scale  # the crop, in source pixels
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return im.resize((tw, th), Image.Resampling.BILINEAR, box=box)  # antialiased when shrinking


def _to_rgb(im: Image.Image, codes: list[str]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, recording what was converted."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        codes.append("palette")
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    elif mode == "CMYK":
        codes.append("cmyk")  # Pillow already undid Adobe's inverted CMYK while decoding
        return im.convert("RGB")
    elif mode.startswith("I") or mode == "F":
        codes.append("grayscale")
        a = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0  # 16-bit samples to 8 bits
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2))  # H×W -> H×W×3
    elif mode in ("L", "1"):
        codes.append("grayscale")
        return im.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if mode in ("LA", "La"):
            codes.append("grayscale")
        codes.append("alpha")
        rgba = im.convert("RGBA")
        # Transparent pixels show the page behind them; white is what a viewer shows, and it
        # keeps whatever colour hides under alpha 0 out of the data.
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    codes.append("mode")
    return im.convert("RGB")


def load_image(data: bytes, name: str, size: tuple[int, int] | None = None) -> tuple[Image.Image, list[str], str]:
    """Decode file bytes to an RGB image (fitted to ``size`` when given), with conversion codes
    and a detail string; raises Skip for what cannot be used."""
    if len(data) == 0:
        raise Skip("zero_byte")
    codes: list[str] = []
    detail = ""
    with warnings.catch_warnings():
        # Pillow only warns between 1× and 2× its pixel limit; beyond the limit is a bomb either way.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Skip("decompression_bomb", str(e)) from None
        except UnidentifiedImageError:
            raise Skip("truncated" if data.startswith(IMAGE_MAGIC) else "not_image") from None
        except Exception as e:
            raise Skip("truncated", f"{type(e).__name__}: {e}") from None
        expected = _EXT_FORMAT.get(PurePosixPath(name).suffix.lower())
        if expected is not None and im.format != expected:
            codes.append("format_mismatch")
            detail = f"{im.format} data in a {PurePosixPath(name).suffix} file"
        try:
            if size is not None and im.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling) when that still
                # covers the target: large photos decode several times faster.
                s = max(size[0] / im.size[1], size[1] / im.size[0])
                im.draft(im.mode, (math.ceil(im.size[0] * s), math.ceil(im.size[1] * s)))
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Skip("decompression_bomb", str(e)) from None
        except Exception as e:  # truncated data, broken Huffman tables, bad CRC...
            raise Skip("truncated", f"{type(e).__name__}: {e}") from None
    try:
        im = _to_rgb(im, codes)
        if size is not None:
            im = fit(im, size)
    except Exception as e:
        raise Skip("truncated", f"{type(e).__name__}: {e}") from None
    return im, codes, detail


def read_file(path: str | os.PathLike[str]) -> bytes:
    """An image file's bytes; a file too large to be an image is judged by its size and first
    bytes and never read whole (Skip)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            bad = oversized(head, os.fstat(f.fileno()).st_size)
            if bad is not None:
                raise Skip(*bad)
            return head + f.read()
    except OSError as e:
        raise Skip("unreadable", e.strerror or str(e)) from None


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """An image file as 8-bit RGB, converted exactly as ``prepare`` converts it (16-bit samples
    scaled by 1/257, CMYK, palette, alpha composited onto white); anything unusable is a
    UserError naming the file and the reason. The one reader of image files for every command."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such image file")
    try:
        return load_image(read_file(p), p.name)[0]
    except Skip as s:
        reason = SKIPPED.get(s.code, s.code)
        raise UserError(f"{p}: {reason}" + (f" ({s.detail.splitlines()[0][:200]})" if s.detail else "")) from None


def _prepare_one(item: tuple[str, Any, str | None, str], spec: Spec) -> tuple[np.ndarray, bytes | None, list[str], str]:
    """-> (H×W×3 uint8 pixels, encoded JPEG or None for raw, codes, detail)."""
    name, data, _, _ = item
    if isinstance(data, np.ndarray):
        arr = data if data.ndim == 3 else np.repeat(data[:, :, None], 3, axis=2)
        if arr.shape[:2] == spec.size and spec.encoding == "raw":
            return np.ascontiguousarray(arr, dtype=np.uint8), None, [], ""
        im = fit(Image.fromarray(arr), spec.size)
        codes: list[str] = []
        detail = ""
    else:
        if isinstance(data, str):
            data = read_file(data)
        im, codes, detail = load_image(data, name, spec.size)
    arr = np.asarray(im, dtype=np.uint8)
    jpeg = None
    if spec.encoding == "jpeg":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=spec.quality)
        jpeg = buf.getvalue()
    return arr, jpeg, codes, detail


Job = tuple[Spec, int, list[tuple[str, Any, "str | None", str]]]  # (spec, ordinal of the first item, items)
Result = tuple[list[tuple["bytes | None", list[str], str]], "tuple | None"]


def _process_chunk(job: Job) -> Result:
    """A chunk of items -> per item (record or None, codes, detail), and the chunk's statistics
    sums (pixel sum as uint32: exact, and 4× smaller to send back than float64)."""
    spec, ordinal0, items = job
    h, w = spec.size
    results: list[tuple[bytes | None, list[str], str]] = []
    psum = np.zeros((h, w, 3), dtype=np.uint32) if spec.stats else None
    rgb_sum, rgb_outer, rgb_n, n = np.zeros(3), np.zeros((3, 3)), 0, 0
    for k, item in enumerate(items):
        if item[2] is not None:
            results.append((None, [item[2]], item[3]))
            continue
        try:
            arr, jpeg, codes, detail = _prepare_one(item, spec)
        except Skip as s:
            results.append((None, [s.code], s.detail))
            continue
        except Exception as e:  # never let one file stop hours of work
            results.append((None, ["unreadable"], f"{type(e).__name__}: {e}"))
            continue
        results.append((jpeg if jpeg is not None else arr.tobytes(), codes, detail))
        if psum is not None:
            psum += arr
            n += 1
            flat = arr.reshape(-1, 3)  # H×W×3 -> HW×3
            if len(flat) > PIXELS_PER_IMAGE:
                # Seeded by the item's position in the split, so the sample does not depend on
                # the chunking (a resumed run gives the same statistics).
                rng = np.random.default_rng([spec.seed, ordinal0 + k])
                flat = flat[rng.integers(0, len(flat), PIXELS_PER_IMAGE)]
            px = flat.astype(np.float64) / 255.0
            rgb_sum += px.sum(0)
            rgb_outer += px.T @ px
            rgb_n += len(px)
    partial = (psum, n, rgb_sum, rgb_outer, rgb_n) if psum is not None else None
    return results, partial


# ---------------------------------------------------------------------------------------------
# Running chunks: in this process or in a pool, in order, with a bounded number in flight


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value

    def get(self) -> Any:
        return self.value


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler: the pool ends its workers


class Executor:
    """``submit(job)`` returns an object with ``get()``; ``workers <= 1`` runs jobs in place."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self.pool = None
        if self.workers > 1:
            methods = mp.get_all_start_methods()
            # fork: workers start in milliseconds and inherit the imports; they only use Pillow
            # and numpy (no torch threads), so it is safe here.
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") and "fork" in methods else "spawn")
            self.pool = ctx.Pool(self.workers, initializer=_worker_init)

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


class StopRequest:
    """Ctrl-C or SIGTERM while writing: the first one asks the run to stop at the next consistent
    point (after a whole chunk), where a checkpoint is written so the rerun resumes there; a second
    one stops at once. :meth:`stop` raises KeyboardInterrupt (exit 130) or Terminated (143)."""

    def __init__(self, progress: bool) -> None:
        self.requested = False
        self.signum: int | None = None
        self.progress = progress
        self._previous: dict[int, Any] = {}

    def stop(self) -> None:
        raise Terminated if self.signum == signal.SIGTERM else KeyboardInterrupt

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.stop()
        self.requested, self.signum = True, signum
        if self.progress:
            print("\nstopping after the current chunk (Ctrl-C again to stop now)", file=sys.stderr)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Opening a source


def open_source(src: str | os.PathLike[str], fmt: str | None = None, *, val_fraction: float | None = None,
                names: Mapping[str, str] | None = None) -> Source:
    """Detect (or take ``fmt``) and open a source; every refusal is a UserError, before any work."""
    from alexnet.data.sources import cifar, idx
    from alexnet.data.sources.folder import FolderSource
    from alexnet.data.sources.imagenet import (DEVKIT_TAR, TRAIN_TAR, VAL_TAR, ImageNetSource, is_imagenet_tree,
                                               is_official_folder, open_imagenet_tree)

    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format {fmt}: unknown; accepted: {', '.join(FORMATS)}")
    p = Path(src).expanduser()
    if not p.exists():
        raise UserError(f"{src}: no such file or folder")
    if p.is_file() and p.name in (TRAIN_TAR, VAL_TAR, DEVKIT_TAR):
        p = p.parent  # the three official files are read together
    if fmt is None:
        if is_official_folder(p):
            fmt = "imagenet"
        elif cifar.find(p) is not None:
            fmt = "cifar"
        elif idx.find(p):
            fmt = "idx"
        elif p.is_dir() and is_imagenet_tree(p):
            fmt = "imagenet-tree"
        elif p.is_dir() or (p.is_file() and tarfile.is_tarfile(p)):
            fmt = "folder"
        else:
            raise UserError(f"{src}: not a source this tool reads (ILSVRC-2012 archives folder, image-folder tree or "
                            f"tar, CIFAR pickles, IDX files); see --format")
    if val_fraction is not None and fmt not in ("folder", "imagenet-tree"):
        raise UserError(f"--val-fraction: only for folder trees; {fmt} has its own validation set")
    if fmt == "imagenet":
        if not p.is_dir():
            raise UserError(f"{src}: give the folder holding {TRAIN_TAR}, {VAL_TAR} and {DEVKIT_TAR}")
        return ImageNetSource(p)
    if fmt == "cifar":
        found = cifar.find(p)
        if found is None:
            raise UserError(f"{src}: no cifar-10-python.tar.gz, cifar-100-python.tar.gz or their extracted folders")
        return cifar.CifarSource(found[1], variant=found[0])
    if fmt == "idx":
        if not p.is_dir():
            p = p.parent
        return idx.IdxSource(p)
    if fmt == "imagenet-tree":
        if not p.is_dir():
            raise UserError(f"{src}: an extracted ImageNet tree is a folder with train/<WNID>/")
        return open_imagenet_tree(p, names=names, val_fraction=val_fraction)
    if fmt == "folder":
        if p.is_file() and not tarfile.is_tarfile(p):
            raise UserError(f"{src}: neither a folder nor a tar archive")
        return FolderSource(p, val_fraction=val_fraction, names=names)
    raise UserError(f"--format {fmt}: give it as SRC 'synthetic'")  # pragma: no cover


def _probe_small(source: Source, n: int = 32) -> tuple[int, int] | None:
    """A folder of small images of one size keeps that size (like CIFAR as PNGs): the size (H, W)
    when the first ``n`` training images all have it and it is at most SMALL."""
    sizes = set()
    for _, it in source.items("train"):
        if it.skip is not None or it.data is None:
            continue
        try:
            f = it.data if isinstance(it.data, str) else io.BytesIO(it.data)  # type: ignore[arg-type]
            with Image.open(f) as im:
                sizes.add((im.size[1], im.size[0]))
        except Exception:
            continue
        if len(sizes) > 1 or max(next(iter(sizes))) > SMALL:
            return None
        n -= 1
        if n == 0:
            break
    return next(iter(sizes)) if len(sizes) == 1 else None


# ---------------------------------------------------------------------------------------------
# prepare


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


def prepare(src: str | os.PathLike[str], out: str | os.PathLike[str], *, size: int | None = None,
            workers: int | None = None, fmt: str | None = None, quality: int = 90, encoding: str | None = None,
            val_fraction: float | None = None, progress: bool = True,
            names: Mapping[str, str] | None = None, lock: Any = None) -> Path:
    """Prepare ``src`` into the dataset folder ``out`` and return ``out``.

    ``src``: the folder of the ILSVRC-2012 archives, an extracted ImageNet tree, an image-folder
    tree (folder or tar), CIFAR pickles (tar.gz or folder), a folder of IDX files, or
    ``"synthetic"``; ``fmt`` forces one of FORMATS. ``size``: images are rescaled so the shorter
    side is ``size`` and centre-cropped to size×size (default 256; small-image datasets keep
    their native size unless ``size`` is given). ``encoding``: "jpeg" (at ``quality``) or "raw";
    by default raw for images of at most 64 pixels a side, JPEG above. ``workers``: decoding
    processes (default: all cores). ``val_fraction``: for a tree without a val/ folder, the part
    of every class held out as ``val``. ``names``: class -> human-readable name overrides.
    ``lock``: the dataset's lock (:func:`~alexnet.data.format.lock_dataset`) when the caller
    already holds it; otherwise it is taken here.
    """
    out = Path(out).expanduser()
    if size is not None and not 1 <= int(size) <= 8192:
        raise UserError(f"--size {size}: must be between 1 and 8192")
    if not 1 <= int(quality) <= 100:
        raise UserError(f"--quality {quality}: must be between 1 and 100")
    if encoding is not None and encoding not in ENCODINGS:
        raise UserError(f"--encoding {encoding}: accepted: {', '.join(ENCODINGS)}")
    if workers is not None and workers < 0:
        raise UserError(f"--workers {workers}: must be 0 or more")
    if fmt == "synthetic" or (fmt is None and str(src) == "synthetic" and not Path(src).exists()):
        from alexnet.data.sources import synthetic

        return Path(synthetic.build(out, size=size) if size else synthetic.build(out))
    # Cheap refusals first: no source scan for a destination that cannot be written.
    if is_prepared(out):
        raise UserError(f"{out}: a prepared dataset is already there; remove it or choose another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder")
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
        native = _probe_small(source)
    if native is not None and size is None:
        target, how = native, "native size"
    else:
        s = int(size or DEFAULT_SIZE)
        target, how = (s, s), f"shorter side rescaled to {s}, central {s}×{s} crop (§2)"
    return target, encoding or ("raw" if max(target) <= SMALL else "jpeg"), how


def _prepare_source(source: Source, out: Path, *, size: int | None, workers: int | None, quality: int,
                    encoding: str | None, progress: bool, lock: Any = None) -> Path:
    target, enc, how = _plan(source, size, encoding)
    nworkers = default_workers() if workers is None else max(1, workers)
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
        with dw, StopRequest(progress) as stop:
            for split in source.split_names:
                state = dw.resume_state(split)
                if dw.is_closed(split):
                    assert state is not None
                    report["converted"] += state[0].get("converted", [])
                    report["skipped"] += state[0].get("skipped", [])
                    continue
                _run_split(source, split, dw, Spec(target, enc, quality, stats=split == "train"), executor,
                           report, state, progress, cheap, stop)
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
    acc = StatsAccumulator(spec.size, PIXELS_PER_IMAGE) if spec.stats else None
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


# ---------------------------------------------------------------------------------------------
# Throughput of prepare itself, per core


def photo_like_jpegs(n: int, size: tuple[int, int] = (500, 375), quality: int = 90, seed: int = 0) -> list[bytes]:
    """JPEGs shaped like ImageNet's (500×375, about 90 kB at quality 90; ImageNet's average is
    ~110 kB): smooth colour regions, edges and texture noise, so the decoder does a photo's work."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for _ in range(n):
        base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        mid = Image.fromarray(rng.integers(0, 256, (h // 12, w // 12, 3), dtype=np.uint8)).resize(
            (w, h), Image.Resampling.BILINEAR)
        a = 0.6 * np.asarray(base, np.float32) + 0.4 * np.asarray(mid, np.float32) + rng.normal(0, 16, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


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
