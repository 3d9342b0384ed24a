"""The writer of the prepared format (:mod:`alexnet.data.format`): atomic, resumable, locked.

The writer builds everything in ``DIR.partial`` and renames it into place at the end, so an
interrupted prepare never leaves a folder that opens as complete; meta.json, whose presence makes
the folder a dataset, is written last. While it writes, it holds the dataset's lock
(:func:`lock_dataset`), so a second writer of the same ``DIR`` is refused.

A writer given a ``fingerprint`` (the source and the options) is resumable: at each
:meth:`DatasetWriter.checkpoint` it makes ``data.bin`` durable and records, in
``DIR.partial/progress.json`` (replaced atomically, so it is always the last consistent state),
how many records are written and the caller's own state; a later writer with the same
fingerprint continues from there, and one with another fingerprint starts clean.

The in-memory writers (:func:`write_arrays`, the benchmark fixtures) encode chunks of images with
:func:`encode_chunk` and write them with :func:`write_split`; ``prepare`` feeds
:class:`DatasetWriter` from its worker processes (:mod:`alexnet.data.workers`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from alexnet.data.format import ENCODINGS, FORMAT_NAME, FORMAT_VERSION, DatasetError, is_prepared
from alexnet.data.jpeg import jpeg_bytes
from alexnet.data.stats import StatsAccumulator
from alexnet.errors import UserError
from alexnet.files import ExclusiveLock, atomic_write, atomic_write_bytes, atomic_write_text

WRITE_CHUNK = 256  # images encoded at a time by write_arrays


def _versions() -> dict[str, str]:
    import PIL
    import torchvision

    from alexnet import __version__

    return {"alexnet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__}


def check_destination(out: Path) -> None:
    """Refuse, before any work, a destination that cannot take a new dataset: a prepared dataset,
    a file, or a folder that is not empty."""
    if is_prepared(out):
        raise UserError(f"{out}: a prepared dataset is already there; remove it or choose another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder")


class SplitWriter:
    """Appends encoded records of one split to ``data.bin`` and remembers offsets and labels."""

    def __init__(self, folder: Path, encoding: str, image_size: tuple[int, int],
                 resume_rows: np.ndarray | None = None) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; accepted: {', '.join(ENCODINGS)}")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.encoding = encoding
        self.image_size = image_size
        self._rows: list[tuple[int, int, int]] = []
        self._offset = 0
        if resume_rows is not None and len(resume_rows):
            # Continue after the last checkpoint: records past it (written after the checkpoint,
            # before the interruption) are cut off.
            self._rows = [tuple(int(v) for v in r) for r in resume_rows]  # type: ignore[misc]
            self._offset = int(resume_rows[-1, 0] + resume_rows[-1, 1])
            self._f = open(folder / "data.bin", "r+b")
            self._f.truncate(self._offset)
            self._f.seek(self._offset)
        else:
            self._f = open(folder / "data.bin", "wb")

    def add(self, record: bytes, label: int) -> None:
        if self.encoding == "raw":
            h, w = self.image_size
            if len(record) != h * w * 3:
                raise ValueError(f"raw record of {len(record)} bytes, expected {h}×{w}×3")
        self._f.write(record)
        self._rows.append((self._offset, len(record), int(label)))
        self._offset += len(record)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        return self._offset

    def checkpoint(self) -> int:
        """Make the records so far durable (data, then ``index.partial.npy``); returns their count."""
        self._f.flush()
        os.fsync(self._f.fileno())
        index = np.asarray(self._rows, dtype=np.int64).reshape(-1, 3)
        atomic_write(self.folder / "index.partial.npy", lambda f: np.save(f, index))
        return len(index)

    def close(self) -> dict[str, Any]:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        index = np.asarray(self._rows, dtype=np.int64).reshape(-1, 3)
        atomic_write(self.folder / "index.npy", lambda f: np.save(f, index))
        (self.folder / "index.partial.npy").unlink(missing_ok=True)
        counts = np.bincount(index[:, 2]).tolist() if len(index) else []
        return {"count": len(index), "encoding": self.encoding, "image_size": list(self.image_size),
                "bytes": int(self._offset), "class_counts": counts}


@dataclass
class DatasetWriter:
    """Writes a prepared dataset atomically: into ``<out>.partial``, renamed to ``<out>`` by
    :meth:`commit`. ``abort`` removes the partial folder; so does an exception inside ``with``,
    unless the writer is resumable (``fingerprint`` given), in which case the partial folder is
    kept for the next run to continue from its last checkpoint."""

    out: Path
    classes: Sequence[str]
    class_names: Sequence[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] | None = None
    lock: ExclusiveLock | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self._own_lock = self.lock is None
        if self.lock is None:
            self.lock = lock_dataset(self.out)
        try:
            self._start()
        except BaseException:
            self._unlock()
            raise

    def _start(self) -> None:
        if is_prepared(self.out):
            raise DatasetError(f"{self.out}: a prepared dataset is already there; remove it or choose another --out")
        if self.out.exists() and any(self.out.iterdir()):
            raise DatasetError(f"{self.out}: folder exists and is not empty")
        self.tmp = Path(str(self.out) + ".partial")
        self._progress: dict[str, Any] = {"fingerprint": self.fingerprint, "splits": {}}
        self.resumed = False
        if self.tmp.exists():
            previous = self._load_progress()
            if previous is not None:
                self._progress, self.resumed = previous, True
            else:
                shutil.rmtree(self.tmp)  # interrupted with nothing reusable: start clean
        self.tmp.mkdir(parents=True, exist_ok=True)
        for name, st in self._progress["splits"].items():
            if "closed" in st:
                self.splits[name] = st["closed"]
        self._open: dict[str, SplitWriter] = {}

    def _load_progress(self) -> dict[str, Any] | None:
        """The previous run's progress when it can be continued: same fingerprint, files intact."""
        if self.fingerprint is None:
            return None
        try:
            progress = json.loads((self.tmp / "progress.json").read_text())
        except (OSError, ValueError):
            return None
        if progress.get("fingerprint") != json.loads(json.dumps(self.fingerprint)):
            return None
        for name, st in progress.get("splits", {}).items():
            folder = self.tmp / name
            if "closed" in st:
                if not (folder / "index.npy").is_file():
                    return None
                continue
            try:
                rows = np.load(folder / "index.partial.npy") if st["rows"] else np.zeros((0, 3), np.int64)
                size = (folder / "data.bin").stat().st_size
            except (OSError, ValueError):
                return None
            if len(rows) < st["rows"] or (st["rows"] and size < rows[st["rows"] - 1, :2].sum()):
                return None
            if st.get("arrays") and not (self.tmp / st["arrays"]).is_file():
                return None
        return progress

    def _save_progress(self) -> None:
        atomic_write_text(self.tmp / "progress.json", json.dumps(self._progress) + "\n")

    def split(self, name: str, encoding: str, image_size: tuple[int, int]) -> SplitWriter:
        """A writer for split ``name``; it continues a checkpointed split of the same geometry."""
        st = self._progress["splits"].get(name)
        rows = None
        if st and "closed" not in st and st["encoding"] == encoding and st["image_size"] == list(image_size):
            rows = np.load(self.tmp / name / "index.partial.npy")[: st["rows"]] if st["rows"] else None
        else:
            self._progress["splits"].pop(name, None)
        w = SplitWriter(self.tmp / name, encoding, image_size, resume_rows=rows)
        self._open[name] = w
        return w

    def is_closed(self, name: str) -> bool:
        """Whether split ``name`` was finished (by this run or an interrupted one being resumed)."""
        return "closed" in self._progress["splits"].get(name, {})

    def resume_state(self, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The state and arrays given to the last :meth:`checkpoint` (or :meth:`close_split`) of
        ``name`` in a resumed run, or None when the split starts from scratch."""
        st = self._progress["splits"].get(name)
        if not st:
            return None
        arrays: dict[str, np.ndarray] = {}
        if st.get("arrays"):
            with np.load(self.tmp / st["arrays"]) as z:
                arrays = {k: z[k] for k in z.files}
        return st.get("state", {}), arrays

    def _store(self, name: str, entry: dict[str, Any], state: dict[str, Any] | None,
               arrays: dict[str, np.ndarray] | None) -> None:
        old = self._progress["splits"].get(name, {}).get("arrays")
        if arrays:
            # A new file per checkpoint, so progress.json never points at arrays of another state.
            seq = self._progress.get("seq", 0) + 1
            self._progress["seq"] = seq
            fname = f"{name}.state{seq}.npz"
            atomic_write(self.tmp / fname, lambda f: np.savez(f, **arrays))
            entry["arrays"] = fname
        elif old:
            entry["arrays"] = old
        entry["state"] = state or {}
        self._progress["splits"][name] = entry
        self._save_progress()
        if old and old != entry.get("arrays"):
            (self.tmp / old).unlink(missing_ok=True)

    def checkpoint(self, name: str, state: dict[str, Any] | None = None,
                   arrays: dict[str, np.ndarray] | None = None) -> None:
        """Make split ``name`` durable up to its current record, with the caller's JSON ``state``
        and numpy ``arrays`` (returned by :meth:`resume_state` in a resumed run)."""
        w = self._open[name]
        n = w.checkpoint()
        self._store(name, {"rows": n, "encoding": w.encoding, "image_size": list(w.image_size)}, state, arrays)

    def close_split(self, name: str, state: dict[str, Any] | None = None,
                    arrays: dict[str, np.ndarray] | None = None) -> None:
        self.splits[name] = self._open.pop(name).close()
        if self.fingerprint is not None:
            self._store(name, {"closed": self.splits[name]}, state, arrays)

    def write_stats(self, mean: torch.Tensor, eigval: torch.Tensor, eigvec: torch.Tensor) -> None:
        from safetensors.torch import save

        atomic_write_bytes(self.tmp / "stats.safetensors", save({
            "mean": mean.float().contiguous(), "eigval": eigval.float().contiguous(),
            "eigvec": eigvec.float().contiguous()}))

    def commit(self) -> Path:
        for name in list(self._open):
            self.close_split(name)
        if not (self.tmp / "stats.safetensors").exists():
            raise DatasetError(f"{self.out}: no training statistics were written")
        self._verify()
        atomic_write_text(self.tmp / "prepare_report.json", json.dumps(self.report, indent=1) + "\n")
        meta = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION,
            "classes": list(self.classes),
            "class_names": list(self.class_names) if self.class_names is not None else list(self.classes),
            "splits": self.splits, "source": self.source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": _versions(),
        }
        # The resume bookkeeping has no place in a finished dataset.
        for p in [self.tmp / "progress.json", *self.tmp.glob("*.state*.npz"), *self.tmp.glob("*/index.partial.npy")]:
            p.unlink(missing_ok=True)
        # meta.json last: its presence is what makes the folder a dataset.
        atomic_write_text(self.tmp / "meta.json", json.dumps(meta, indent=1) + "\n")
        if self.out.exists():
            self.out.rmdir()  # empty (checked in __post_init__)
        os.replace(self.tmp, self.out)
        self._unlock()
        return self.out

    def _verify(self) -> None:
        """Every split's data.bin holds exactly the bytes its index describes: nothing else
        (another writer, a disk that lied) can have changed them behind this writer's back."""
        for name, info in self.splits.items():
            folder = self.tmp / name
            try:
                index = np.load(folder / "index.npy")
                size = (folder / "data.bin").stat().st_size
            except (OSError, ValueError) as e:
                raise DatasetError(f"{folder}: cannot verify the split before committing ({e})") from None
            end = int(index[-1, 0] + index[-1, 1]) if len(index) else 0  # records are appended in order
            if len(index) != info["count"] or size != end or size != info["bytes"]:
                raise DatasetError(f"{folder / 'data.bin'}: {size} bytes, but its index of {len(index)} records ends at "
                                   f"byte {end}; not committed (was another process writing here?)")

    def abort(self) -> None:
        self.release()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def release(self) -> None:
        """Close open files, unlock, and keep the partial folder (for a later resume)."""
        for w in self._open.values():
            w._f.close()
        self._open.clear()
        self._unlock()

    def _unlock(self) -> None:
        if self.lock is not None and self._own_lock:  # a lock given by the caller is the caller's to release
            self.lock.release()

    def keep_checkpointed(self) -> int:
        """After a failed write (a full disk): cut every unfinished split back to its last
        checkpoint, freeing what was written since, and return how many records are kept for a
        resume; with nothing checkpointed the partial folder is removed and 0 returned."""
        from alexnet.files import remove_temporaries

        self.release()
        kept = 0
        try:
            progress = json.loads((self.tmp / "progress.json").read_text())
            for name, st in progress.get("splits", {}).items():
                if "closed" in st:
                    kept += int(st["closed"]["count"])
                    continue
                folder, n, end = self.tmp / name, int(st["rows"]), 0
                if n:
                    rows = np.load(folder / "index.partial.npy")
                    end = int(rows[n - 1, 0] + rows[n - 1, 1])
                os.truncate(folder / "data.bin", end)
                remove_temporaries(folder)
                kept += n
        except (OSError, ValueError, KeyError, IndexError):
            kept = 0
        if kept == 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            remove_temporaries(self.tmp)
        return kept

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            if self.fingerprint is not None and self.tmp.exists():
                self.release()
            else:
                self.abort()


def lock_dataset(out: str | os.PathLike[str]) -> ExclusiveLock:
    """The lock every writer of the dataset ``out`` (and of ``out.partial``) holds while it writes:
    ``.<name>.lock`` beside it."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from alexnet.files import os_error_line

        raise DatasetError(f"{out}: cannot be created ({os_error_line(e)})") from None
    return ExclusiveLock(out.parent / f".{out.name}.lock", out)


def encode_record(img_hwc: np.ndarray, encoding: str, quality: int = 90) -> bytes:
    """One uint8 H×W×3 image as a record of ``encoding``: its raw bytes, or a JPEG file."""
    if encoding == "raw":
        return np.ascontiguousarray(img_hwc, dtype=np.uint8).tobytes()
    return jpeg_bytes(img_hwc, quality)


# A part of a split as the in-memory writers make it: records, their labels, and (for the
# training split) the statistics sums of its images (StatsAccumulator.sums()), or None.
Chunk = tuple[Sequence[bytes], Sequence[int], "tuple | None"]


def encode_chunk(images: Iterable[np.ndarray], labels: Sequence[int], encoding: str, quality: int = 90, *,
                 stats: bool = False, ordinal: int = 0) -> Chunk:
    """Encode uint8 H×W×3 ``images`` (the first at position ``ordinal`` of its split) as records,
    with their statistics sums when ``stats``."""
    acc: StatsAccumulator | None = None
    records = []
    for k, img in enumerate(images):
        if stats:
            if acc is None:
                acc = StatsAccumulator(img.shape[:2])
            acc.add(img, ordinal + k)
        records.append(encode_record(img, encoding, quality))
    return records, labels, acc.sums() if acc is not None else None


def write_split(dw: DatasetWriter, name: str, encoding: str, image_size: tuple[int, int], chunks: Iterable[Chunk],
                *, stats: bool = False) -> None:
    """Write split ``name`` from ``chunks`` in order and close it; with ``stats``, also the
    statistics of its images (from the chunks' sums)."""
    sw = dw.split(name, encoding, image_size)
    acc = StatsAccumulator(image_size) if stats else None
    for records, labels, sums in chunks:
        for record, label in zip(records, labels, strict=True):
            sw.add(record, int(label))
        if acc is not None and sums is not None:
            acc.add_sums(*sums)
    dw.close_split(name)
    if acc is not None:
        dw.write_stats(*acc.finish())


def write_arrays(
    out: str | os.PathLike[str],
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    classes: Sequence[str],
    class_names: Sequence[str] | None = None,
    source: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
    encoding: str = "raw",
    quality: int = 90,
) -> Path:
    """Write in-memory uint8 N×H×W×3 arrays and labels as a prepared dataset, raw or as JPEG; the
    ``train`` split's statistics as ``prepare`` computes them."""
    with DatasetWriter(Path(out), classes, class_names, source or {}, report=report or {}) as dw:
        for name, (images, labels) in splits.items():
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"split {name}: expected uint8 N×H×W×3, got {images.dtype} {images.shape}")
            train = name == "train"
            chunks = (encode_chunk(images[i:i + WRITE_CHUNK], labels[i:i + WRITE_CHUNK], encoding, quality,
                                   stats=train, ordinal=i) for i in range(0, len(images), WRITE_CHUNK))
            write_split(dw, name, encoding, images.shape[1:3], chunks, stats=train)
        return dw.commit()
