"""The prepared on-disk dataset format and its reader.

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
datasets keep their native size). A folder opens as a dataset only once meta.json exists (the
writer, :mod:`alexnet.data.writer`, builds everything in ``DIR.partial`` and renames it into place
at the end, so an interrupted prepare never leaves a folder that opens as complete); the
statistics are computed by :mod:`alexnet.data.stats`.

This module is what the readers of a dataset need (the loader, evaluation, the experiments); it
imports neither the writer nor the statistics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from alexnet.data.jpeg import decode_jpeg_rgb
from alexnet.errors import UserError

FORMAT_NAME = "alexnet-prepared"
FORMAT_VERSION = 1
ENCODINGS = ("jpeg", "raw")


class DatasetError(UserError):
    """A dataset that cannot be opened or written; the message names the path and the reason."""


def is_prepared(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / "meta.json").is_file()


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


def decode_record(record: bytes | np.ndarray, encoding: str, image_size: tuple[int, int]) -> torch.Tensor:
    """One record -> uint8 3×H×W tensor."""
    if encoding == "raw":
        h, w = image_size
        arr = np.frombuffer(record, dtype=np.uint8).reshape(h, w, 3)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # H×W×3 -> 3×H×W
    return decode_jpeg_rgb(torch.frombuffer(bytearray(record), dtype=torch.uint8))


class MetaClasses:
    """``classes``, ``class_names`` and ``num_classes`` of a split, read from its ``meta`` (the
    prepared format's meta.json, or the copy of it an export's manifest carries)."""

    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])


class PreparedDataset(MetaClasses, torch.utils.data.Dataset):
    """One split of a prepared dataset, checked when opened.

    ``len(ds)`` images; ``ds[i]`` is ``(uint8 3×H×W tensor, int label)``; ``ds.classes`` the class
    identifiers (e.g. WNIDs), ``ds.class_names`` their names.

    Args:
        root: The dataset's folder (``alexnet prepare ... --out DIR``).
        split: ``"train"`` or ``"val"``.

    Raises:
        DatasetError: A folder that is not a prepared dataset or is damaged, named with the reason.
    """

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
        return read_stats(self.root / "stats.safetensors", self.image_size)


def read_stats(path: Path, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """A dataset's stats.safetensors, checked: the mean image of ``image_size`` and the RGB PCA."""
    from safetensors.torch import load_file

    h, w = image_size
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
