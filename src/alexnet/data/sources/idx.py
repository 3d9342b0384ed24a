"""MNIST-family IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST): ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
optionally ``.gz``, in one folder. The t10k (test) set becomes ``val``; with ``val_fraction`` a
stratified part of the training set becomes ``val`` instead and the test set is left out, so that a
recipe can be chosen on images that are not the test set (which is then scored from a dataset
prepared without it).

Grayscale is repeated into three equal channels (the networks take RGB), and 28×28 digits are
padded to 32×32 with background, as LeCun et al. (1998) did for LeNet-5 so that strokes can reach
the centre of the top feature detectors' receptive fields.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from alexnet.errors import UserError

from .base import Item, Source, file_stamp
from .folder import check_val_fraction, held_out_by_class

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]
PAD = 2  # 28 + 2×2 = 32


def read_idx(path: Path) -> np.ndarray:
    """An IDX file: magic 0x0000 <type> <ndim>, ndim big-endian uint32 sizes, then the data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise UserError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    need = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - head != need:
        raise UserError(f"{path}: {len(raw) - head} data bytes, the header's shape {shape} needs {need}")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape)


def _find(folder: Path, split_words: tuple[str, ...], kind: str) -> Path | None:
    # e.g. train-images-idx3-ubyte(.gz), emnist-digits-train-images-idx3-ubyte.gz, t10k-labels.idx1-ubyte
    pat = re.compile(rf"(^|[-_.])({'|'.join(split_words)})[-_.]{kind}[-_.]idx\d[-_.]ubyte(\.gz)?$")
    hits = sorted(p for p in folder.iterdir() if p.is_file() and pat.search(p.name))
    return hits[0] if hits else None


def find(path: Path) -> bool:
    return path.is_dir() and _find(path, ("train",), "images") is not None


@dataclass
class IdxSource(Source):
    val_fraction: float | None = None
    _arrays: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _files: list[Path] = field(default_factory=list)
    _rows: dict[str, np.ndarray] = field(default_factory=dict)  # per split: its images' rows in its IDX file

    def __post_init__(self) -> None:
        self.kind = "idx"
        for split, words in (("train", ("train",)), ("val", ("t10k", "test"))):
            xi, yi = _find(self.path, words, "images"), _find(self.path, words, "labels")
            if xi is None or yi is None:
                raise UserError(f"{self.path}: missing the {'/'.join(words)} "
                                f"{'images' if xi is None else 'labels'} IDX file")
            x, y = read_idx(xi), read_idx(yi)
            if x.ndim != 3 or x.dtype != np.uint8:
                raise UserError(f"{xi}: expected uint8 N×H×W images, got {x.dtype} {x.shape}")
            if y.ndim != 1 or len(y) != len(x):
                raise UserError(f"{yi}: {len(y)} labels for {len(x)} images in {xi.name}")
            self._arrays[split] = (x, y.astype(np.int64))
            self._files += [xi, yi]
        self._rows = {k: np.arange(len(a[1])) for k, a in self._arrays.items()}
        if self.val_fraction is not None:
            self._hold_out(float(self.val_fraction))
        shapes = {a[0].shape[1:] for a in self._arrays.values()}
        if len(shapes) != 1:
            raise UserError(f"{self.path}: train and test images differ in size ({' vs '.join(map(str, shapes))})")
        ys = np.concatenate([a[1] for a in self._arrays.values()])
        if ys.min() < 0:
            raise UserError(f"{self.path}: negative labels")
        n = int(ys.max()) + 1
        self.classes = [str(i) for i in range(n)]
        fashion = "fashion" in str(self.path).lower() and n == len(FASHION_NAMES)
        self.class_names = list(FASHION_NAMES) if fashion else list(self.classes)
        h, w = shapes.pop()
        self.pad = PAD if (h, w) == (28, 28) else 0
        self.native_size = (h + 2 * self.pad, w + 2 * self.pad)

    def _hold_out(self, frac: float) -> None:
        """``val``: round(frac × n) images of every class of the training set, chosen as ``held_out``
        chooses a folder tree's (the same on every machine); the test set is in neither split."""
        check_val_fraction(frac)
        y = self._arrays["train"][1]
        chosen = held_out_by_class(([f"train[{k}]" for k in np.flatnonzero(y == c)] for c in np.unique(y)), frac)
        val = np.array([f"train[{k}]" in chosen for k in range(len(y))], dtype=bool)
        self._rows = {"train": np.flatnonzero(~val), "val": np.flatnonzero(val)}

    def _file_of(self, split: str) -> str:
        """The IDX file pair a split's images come from: with val_fraction both come from train."""
        return "train" if self.val_fraction is not None else split

    def count(self, split: str) -> int | None:
        return len(self._rows[split])

    def items(self, split: str, after: Any = None) -> Iterator[tuple[Any, Item]]:
        file = self._file_of(split)
        (x, y), p, rows = self._arrays[file], self.pad, self._rows[split]
        for i in range(0 if after is None else int(after) + 1, len(rows)):
            k = int(rows[i])  # named by its row in its IDX file: train[k] is the same image in every split
            img = np.pad(x[k], ((p, p), (p, p))) if p else x[k]  # zero = MNIST's black background
            yield i, Item(f"{file}[{k}]", int(y[k]), np.repeat(img[:, :, None], 3, axis=2))  # H×W -> H×W×3

    def describe(self) -> dict[str, Any]:
        val = ("the t10k (test) set" if self.val_fraction is None else
               f"{self.val_fraction:g} of every class of the training set (the t10k test set left out)")
        return {"kind": self.kind, "path": str(self.path), "files": [f.name for f in self._files],
                "padding": self.pad, "val": val}

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "files": [file_stamp(f) for f in self._files],
                **({"val_fraction": self.val_fraction} if self.val_fraction is not None else {})}
