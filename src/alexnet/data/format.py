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

FORMAT_NAME = "alexnet-prepared"
FORMAT_VERSION = 1
ENCODINGS = ("jpeg", "raw")


class DatasetError(Exception):
    """A dataset that cannot be opened or written; the message names the path and the reason."""


def _versions() -> dict[str, str]:
    import PIL
    import torchvision

    from alexnet import __version__

    return {"alexnet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__}


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
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{meta_path}: unreadable ({e})") from None
    if meta.get("format") != FORMAT_NAME:
        raise DatasetError(f"{meta_path}: not an {FORMAT_NAME} dataset")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise DatasetError(f"{meta_path}: format version {meta.get('version')} is newer than this tool ({FORMAT_VERSION})")
    return meta


# ---------------------------------------------------------------------------------------------
# Writing


class SplitWriter:
    """Appends encoded records of one split to ``data.bin`` and remembers offsets and labels."""

    def __init__(self, folder: Path, encoding: str, image_size: tuple[int, int]) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; accepted: {', '.join(ENCODINGS)}")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.encoding = encoding
        self.image_size = image_size
        self._f = open(folder / "data.bin", "wb")
        self._rows: list[tuple[int, int, int]] = []
        self._offset = 0

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

    def close(self) -> dict[str, Any]:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        index = np.asarray(self._rows, dtype=np.int64).reshape(-1, 3)
        np.save(self.folder / "index.npy", index)
        counts = np.bincount(index[:, 2]).tolist() if len(index) else []
        return {"count": len(index), "encoding": self.encoding, "image_size": list(self.image_size),
                "bytes": int(self._offset), "class_counts": counts}


@dataclass
class DatasetWriter:
    """Writes a prepared dataset atomically: into ``<out>.partial``, renamed to ``<out>`` by
    :meth:`commit`. ``abort`` (or an exception inside ``with``) removes the partial folder."""

    out: Path
    classes: Sequence[str]
    class_names: Sequence[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if is_prepared(self.out):
            raise DatasetError(f"{self.out}: a prepared dataset is already there; remove it or choose another --out")
        if self.out.exists() and any(self.out.iterdir()):
            raise DatasetError(f"{self.out}: folder exists and is not empty")
        self.tmp = Path(str(self.out) + ".partial")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)  # a previous run was interrupted: start clean
        self.tmp.mkdir(parents=True)
        self._open: dict[str, SplitWriter] = {}

    def split(self, name: str, encoding: str, image_size: tuple[int, int]) -> SplitWriter:
        w = SplitWriter(self.tmp / name, encoding, image_size)
        self._open[name] = w
        return w

    def close_split(self, name: str) -> None:
        self.splits[name] = self._open.pop(name).close()

    def write_stats(self, mean: torch.Tensor, eigval: torch.Tensor, eigvec: torch.Tensor) -> None:
        from safetensors.torch import save_file

        save_file({"mean": mean.float().contiguous(), "eigval": eigval.float().contiguous(),
                   "eigvec": eigvec.float().contiguous()}, str(self.tmp / "stats.safetensors"))

    def commit(self) -> Path:
        for name in list(self._open):
            self.close_split(name)
        if not (self.tmp / "stats.safetensors").exists():
            raise DatasetError(f"{self.out}: no training statistics were written")
        (self.tmp / "prepare_report.json").write_text(json.dumps(self.report, indent=1) + "\n")
        meta = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION,
            "classes": list(self.classes),
            "class_names": list(self.class_names) if self.class_names is not None else list(self.classes),
            "splits": self.splits, "source": self.source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": _versions(),
        }
        # meta.json last: its presence is what makes the folder a dataset.
        tmp_meta = self.tmp / "meta.json.tmp"
        tmp_meta.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp_meta, self.tmp / "meta.json")
        if self.out.exists():
            self.out.rmdir()  # empty (checked in __post_init__)
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        for w in self._open.values():
            w._f.close()
        self._open.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()


class StatsAccumulator:
    """Streams the training split's per-pixel mean (0–255) and RGB covariance ([0, 1] scale)."""

    def __init__(self, image_size: tuple[int, int], pixels_per_image: int = 256, seed: int = 0) -> None:
        h, w = image_size
        self.sum = np.zeros((h, w, 3), dtype=np.float64)
        self.n = 0
        self.rgb_sum = np.zeros(3, dtype=np.float64)
        self.rgb_outer = np.zeros((3, 3), dtype=np.float64)
        self.rgb_n = 0
        self.pixels_per_image = pixels_per_image
        self.rng = np.random.default_rng(seed)

    def add(self, img_hwc: np.ndarray) -> None:
        self.sum += img_hwc
        self.n += 1
        flat = img_hwc.reshape(-1, 3)
        take = flat if len(flat) <= self.pixels_per_image else flat[self.rng.integers(0, len(flat), self.pixels_per_image)]
        px = take.astype(np.float64) / 255.0
        self.rgb_sum += px.sum(0)
        self.rgb_outer += px.T @ px
        self.rgb_n += len(px)

    def merge(self, other: "StatsAccumulator") -> None:
        self.sum += other.sum
        self.n += other.n
        self.rgb_sum += other.rgb_sum
        self.rgb_outer += other.rgb_outer
        self.rgb_n += other.rgb_n

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.n == 0:
            raise DatasetError("no training images to compute the mean image from")
        mean = torch.from_numpy(self.sum / self.n).permute(2, 0, 1).float()  # H×W×3 -> 3×H×W
        mu = self.rgb_sum / self.rgb_n
        cov = self.rgb_outer / self.rgb_n - np.outer(mu, mu)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]  # largest first, as the paper lists them
        return mean, torch.from_numpy(eigval[order].copy()).float(), torch.from_numpy(eigvec[:, order].copy()).float()


def write_arrays(
    out: str | os.PathLike[str],
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    classes: Sequence[str],
    class_names: Sequence[str] | None = None,
    source: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
) -> Path:
    """Write in-memory uint8 N×H×W×3 arrays and labels as a raw-encoded prepared dataset."""
    with DatasetWriter(Path(out), classes, class_names, source or {}, report=report or {}) as dw:
        for name, (images, labels) in splits.items():
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"split {name}: expected uint8 N×H×W×3, got {images.dtype} {images.shape}")
            h, w = images.shape[1:3]
            sw = dw.split(name, "raw", (h, w))
            for img, lab in zip(images, labels):
                sw.add(np.ascontiguousarray(img).tobytes(), int(lab))
            dw.close_split(name)
            if name == "train":
                acc = StatsAccumulator((h, w))
                for img in images:
                    acc.add(img)
                dw.write_stats(*acc.finish())
        return dw.commit()


# ---------------------------------------------------------------------------------------------
# Reading


def decode_record(record: bytes | np.ndarray, encoding: str, image_size: tuple[int, int]) -> torch.Tensor:
    """One record -> uint8 3×H×W tensor."""
    if encoding == "raw":
        h, w = image_size
        arr = np.frombuffer(record, dtype=np.uint8).reshape(h, w, 3)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # H×W×3 -> 3×H×W
    from torchvision.io import ImageReadMode, decode_jpeg

    data = torch.frombuffer(bytearray(record), dtype=torch.uint8)
    return decode_jpeg(data, mode=ImageReadMode.RGB)


class PreparedDataset(torch.utils.data.Dataset):
    """One split of a prepared dataset: ``ds[i] -> (uint8 3×H×W tensor, int label)``."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        self.root = Path(root)
        self.meta = read_meta(self.root)
        if split not in self.meta["splits"]:
            raise DatasetError(f"{self.root}: no split {split!r}; it has {', '.join(self.meta['splits'])}")
        self.split = split
        info = self.meta["splits"][split]
        self.encoding: str = info["encoding"]
        self.image_size: tuple[int, int] = tuple(info["image_size"])  # type: ignore[assignment]
        self.index = np.load(self.root / split / "index.npy")
        self.labels = self.index[:, 2].copy()
        self._data_path = self.root / split / "data.bin"
        self._data: np.memmap | None = None

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
        return decode_record(self.record(i).tobytes(), self.encoding, self.image_size), int(self.labels[i])

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
                out[j] = decode_record(self.record(int(i)).tobytes(), self.encoding, self.image_size)
        return out

    def stats(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.root / "stats.safetensors"))
