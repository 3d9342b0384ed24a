"""The prepared on-disk dataset format, its writer and its reader.

A prepared dataset is a folder::

    DIR/
      meta.json            format, version, classes (e.g. WNIDs), class_names, splits (count,
                           encoding, image size), source, created, tool versions; written last
      stats.safetensors    training split statistics (§2, §4.1): "mean" 3×H×W float32 per-pixel
                           mean image on the 0–255 scale; "eigval" (3,) and "eigvec" 3×3 (columns
                           are eigenvectors) of the RGB covariance on the [0, 1] scale
      prepare_report.json  every converted or skipped source file with its reason
      <split>/data.bin     the records back to back: JPEG files, or raw H×W×3 uint8 arrays
      <split>/index.npy    int64 N×3: byte offset, byte length, label

Every image of a split has the same size (256×256 as the paper prepares ImageNet; small-image
datasets keep their native size). A folder opens as a dataset only once meta.json exists, and
the writer builds everything in ``DIR.partial`` and renames it into place at the end, so an
interrupted prepare never leaves a folder that opens as complete.

A writer given a ``fingerprint`` (the source and the options) is resumable: at each
:meth:`DatasetWriter.checkpoint` it makes ``data.bin`` durable and records, in
``DIR.partial/progress.json`` (replaced atomically, so it is always the last consistent state),
how many records are written and the caller's own state; a later writer with the same
fingerprint continues from there, and one with another fingerprint starts clean.
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

from alexnet.data.jpeg import decode_jpeg_rgb, jpeg_bytes
from alexnet.errors import UserError
from alexnet.files import ExclusiveLock, atomic_write, atomic_write_bytes, atomic_write_text

FORMAT_NAME = "alexnet-prepared"
FORMAT_VERSION = 1
ENCODINGS = ("jpeg", "raw")
PIXELS_PER_IMAGE = 256  # pixels sampled per training image for the RGB covariance (§4.1's PCA)
STATS_SEED = 0
WRITE_CHUNK = 256  # images encoded at a time by write_arrays


class DatasetError(UserError):
    """A dataset that cannot be opened or written; the message names the path and the reason."""


def _versions() -> dict[str, str]:
    import PIL
    import torchvision

    from alexnet import __version__

    return {"alexnet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__}


def is_prepared(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / "meta.json").is_file()


def check_destination(out: Path) -> None:
    """Refuse, before any work, a destination that cannot take a new dataset: a prepared dataset,
    a file, or a folder that is not empty."""
    if is_prepared(out):
        raise UserError(f"{out}: a prepared dataset is already there; remove it or choose another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder")


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such dataset folder")
    meta_path = p / "meta.json"
    if not meta_path.is_file():
        if Path(str(p) + ".partial").exists() or (p / "_partial").exists():
            raise DatasetError(f"{p}: incomplete dataset (an interrupted prepare); rerun 'alexnet prepare'")
        raise DatasetError(f"{p}: not a prepared dataset (no meta.json); run 'alexnet prepare' on it first")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DatasetError(f"{meta_path}: unreadable ({str(e)[:200]})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path}: not a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise DatasetError(f"{meta_path}: not an {FORMAT_NAME} dataset")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise DatasetError(f"{meta_path}: format version {meta.get('version')} is newer than this tool ({FORMAT_VERSION})")
    return meta


# ---------------------------------------------------------------------------------------------
# Writing


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


class StatsAccumulator:
    """Streams the training split's statistics: the per-pixel mean (0–255) and the RGB covariance
    ([0, 1] scale) of ``pixels_per_image`` pixels sampled from each image. The one computation of
    them: every writer of a prepared dataset (``prepare``'s workers, :func:`write_arrays`, the
    benchmark fixtures) goes through :meth:`add`.

    The pixels of the image at position ``ordinal`` in its split are drawn by a generator seeded
    with ``[seed, ordinal]``, so the statistics depend on the images and their order only, not
    on which writer made the dataset, how it cut the work into chunks, or where a resumed run
    continued. Chunks accumulated apart (in worker processes) are added up with :meth:`add_sums`.
    """

    def __init__(self, image_size: tuple[int, int], pixels_per_image: int = PIXELS_PER_IMAGE,
                 seed: int = STATS_SEED) -> None:
        h, w = image_size
        self.sum = np.zeros((h, w, 3), dtype=np.float64)
        self.n = 0
        self.rgb_sum = np.zeros(3, dtype=np.float64)
        self.rgb_outer = np.zeros((3, 3), dtype=np.float64)
        self.rgb_n = 0
        self.pixels_per_image = pixels_per_image
        self.seed = seed

    def add(self, img_hwc: np.ndarray, ordinal: int | None = None) -> None:
        """Add one uint8 H×W×3 image; ``ordinal`` is its position in the split (default: the
        number of images added so far)."""
        self.sum += img_hwc
        flat = img_hwc.reshape(-1, 3)  # H×W×3 -> HW×3
        if len(flat) > self.pixels_per_image:
            rng = np.random.default_rng([self.seed, self.n if ordinal is None else ordinal])
            flat = flat[rng.integers(0, len(flat), self.pixels_per_image)]
        self.n += 1
        px = flat.astype(np.float64) / 255.0
        self.rgb_sum += px.sum(0)
        self.rgb_outer += px.T @ px
        self.rgb_n += len(px)

    def sums(self) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, int]:
        """What :meth:`add_sums` takes: (pixel sum, images, RGB sum, RGB outer-product sum, pixels)."""
        return self.sum, self.n, self.rgb_sum, self.rgb_outer, self.rgb_n

    def add_sums(self, pixel_sum: np.ndarray, n: int, rgb_sum: np.ndarray, rgb_outer: np.ndarray, rgb_n: int) -> None:
        """Add the :meth:`sums` of another accumulator (e.g. a worker process's, over a chunk)."""
        self.sum += pixel_sum
        self.n += int(n)
        self.rgb_sum += rgb_sum
        self.rgb_outer += rgb_outer
        self.rgb_n += int(rgb_n)

    def state(self) -> dict[str, np.ndarray]:
        """The sums as arrays (for a checkpoint); :meth:`load_state` restores them."""
        return {"sum": self.sum, "n": np.int64(self.n), "rgb_sum": self.rgb_sum, "rgb_outer": self.rgb_outer,
                "rgb_n": np.int64(self.rgb_n)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if state["sum"].shape != self.sum.shape:
            raise ValueError(f"statistics of {state['sum'].shape} images, expected {self.sum.shape}")
        self.sum = state["sum"].astype(np.float64)
        self.n = int(state["n"])
        self.rgb_sum = state["rgb_sum"].astype(np.float64)
        self.rgb_outer = state["rgb_outer"].astype(np.float64)
        self.rgb_n = int(state["rgb_n"])

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.n == 0:
            raise DatasetError("no training images to compute the mean image from")
        mean = torch.from_numpy(self.sum / self.n).permute(2, 0, 1).float()  # H×W×3 -> 3×H×W
        mu = self.rgb_sum / self.rgb_n
        cov = self.rgb_outer / self.rgb_n - np.outer(mu, mu)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]  # largest first, as the paper lists them
        return mean, torch.from_numpy(eigval[order].copy()).float(), torch.from_numpy(eigvec[:, order].copy()).float()


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


# ---------------------------------------------------------------------------------------------
# Reading


def decode_record(record: bytes | np.ndarray, encoding: str, image_size: tuple[int, int]) -> torch.Tensor:
    """One record -> uint8 3×H×W tensor."""
    if encoding == "raw":
        h, w = image_size
        arr = np.frombuffer(record, dtype=np.uint8).reshape(h, w, 3)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # H×W×3 -> 3×H×W
    return decode_jpeg_rgb(torch.frombuffer(bytearray(record), dtype=torch.uint8))


class PreparedDataset(torch.utils.data.Dataset):
    """One split of a prepared dataset: ``ds[i] -> (uint8 3×H×W tensor, int label)``."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        self.root = Path(root)
        self.meta = read_meta(self.root)
        meta_path = self.root / "meta.json"
        splits, classes = self.meta.get("splits"), self.meta.get("classes")
        if not isinstance(splits, dict) or not isinstance(classes, list) or not classes:
            raise DatasetError(f"{meta_path}: damaged (no 'splits' or 'classes'); prepare the dataset again")
        self.meta.setdefault("class_names", list(classes))
        if split not in splits:
            raise DatasetError(f"{self.root}: no split {split!r}; it has {', '.join(splits)}")
        self.split = split
        info = splits[split]
        try:
            self.encoding: str = info["encoding"]
            self.image_size: tuple[int, int] = (int(info["image_size"][0]), int(info["image_size"][1]))
            count = int(info["count"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise DatasetError(f"{meta_path}: split {split!r} lacks its encoding, image_size or count; "
                               f"prepare the dataset again") from None
        if self.encoding not in ENCODINGS:
            raise DatasetError(f"{meta_path}: split {split!r} has unknown encoding {self.encoding!r}")
        self._data_path = self.root / split / "data.bin"
        self.index = self._load_index(self.root / split / "index.npy", count)
        self.labels = self.index[:, 2].copy()
        self._data: np.memmap | None = None

    def _load_index(self, path: Path, count: int) -> np.ndarray:
        """index.npy, checked against meta.json and data.bin: what the loader trusts blindly later
        (offsets inside the file, labels below the class count) is checked once here."""
        try:
            index = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DatasetError(f"{path}: unreadable index ({str(e).splitlines()[0][:200]}); prepare the dataset again") from None
        if index.dtype != np.int64 or index.ndim != 2 or index.shape[1] != 3:
            raise DatasetError(f"{path}: not an index (int64 N×3 expected, got {index.dtype} {index.shape})")
        if len(index) != count:
            raise DatasetError(f"{path}: {len(index)} records, meta.json says {count}; prepare the dataset again")
        try:
            size = self._data_path.stat().st_size
        except OSError as e:
            raise DatasetError(f"{self._data_path}: {e.strerror or e}") from None
        off, length, label = index[:, 0], index[:, 1], index[:, 2]
        bad = np.flatnonzero((off < 0) | (length <= 0) | (off + length > size))
        if len(bad):
            i = int(bad[0])
            raise DatasetError(f"{self._data_path}: record {i} (bytes {off[i]}..{off[i] + length[i]}) lies outside the "
                               f"file's {size} bytes; the dataset is damaged: prepare it again")
        if self.encoding == "raw":
            h, w = self.image_size
            rec = h * w * 3
            bad = np.flatnonzero((length != rec) | (off != np.arange(len(index)) * rec))
            if len(bad):
                raise DatasetError(f"{path}: record {int(bad[0])} is not the {rec}-byte raw {h}×{w} image at its place; "
                                   f"the dataset is damaged: prepare it again")
        n = len(self.meta["classes"])
        bad = np.flatnonzero((label < 0) | (label >= n))
        if len(bad):
            i = int(bad[0])
            raise DatasetError(f"{path}: record {i} has label {label[i]}, but the dataset has {n} classes")
        return index

    def damaged(self, i: int, e: BaseException) -> DatasetError:
        """The error for record ``i`` that does not decode."""
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return DatasetError(f"{self._data_path}: record {i} cannot be decoded ({why}); the dataset is damaged: "
                            f"prepare it again")

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    def _mm(self) -> np.memmap:
        # Opened lazily so that the dataset pickles cheaply into worker processes.
        if self._data is None:
            self._data = np.memmap(self._data_path, dtype=np.uint8, mode="r")
        return self._data

    def data(self) -> np.memmap:
        """The split's data.bin, every record back to back, as a read-only uint8 memmap (record ``i``
        is ``data()[off : off + length]`` with ``off, length, _ = index[i]``)."""
        return self._mm()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_data"] = None
        return state

    def __len__(self) -> int:
        return len(self.index)

    def record(self, i: int) -> np.ndarray:
        off, length, _ = self.index[i]
        return self._mm()[off : off + length]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        try:
            img = decode_record(self.record(i).tobytes(), self.encoding, self.image_size)
        except RuntimeError as e:
            raise self.damaged(i, e) from None
        return img, int(self.labels[i])

    def read_batch(self, indices: Sequence[int] | np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode ``indices`` into a uint8 N×3×H×W tensor (into ``out`` when given)."""
        h, w = self.image_size
        idx = np.asarray(indices, dtype=np.int64)
        if out is None:
            out = torch.empty((len(idx), 3, h, w), dtype=torch.uint8)
        if self.encoding == "raw":
            # Fixed-size records: one gather from the memmap.
            mm = self._mm().reshape(-1, h, w, 3) if self._mm().size else np.zeros((0, h, w, 3), np.uint8)
            out.copy_(torch.from_numpy(np.ascontiguousarray(mm[idx])).permute(0, 3, 1, 2))
        else:
            for j, i in enumerate(idx):
                try:
                    out[j] = decode_record(self.record(int(i)).tobytes(), self.encoding, self.image_size)
                except RuntimeError as e:
                    raise self.damaged(int(i), e) from None
        return out

    def stats(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = self.root / "stats.safetensors"
        h, w = self.image_size
        try:
            st = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for damaged files
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise DatasetError(f"{path}: unreadable ({why}); prepare the dataset again") from None
        want = {"mean": (3, h, w), "eigval": (3,), "eigvec": (3, 3)}
        for k, shape in want.items():
            if k not in st or tuple(st[k].shape) != shape:
                got = tuple(st[k].shape) if k in st else "missing"
                raise DatasetError(f"{path}: {k!r} should be {'×'.join(map(str, shape))}, got {got}; prepare the dataset again")
            if not bool(torch.isfinite(st[k].float()).all()):  # else blamed on the learning rate at the first step
                raise DatasetError(f"{path}: {k!r} holds NaN or infinite values; prepare the dataset again")
        return st
