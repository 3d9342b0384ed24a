"""CIFAR-10 and CIFAR-100, from the "python version" pickles: ``cifar-10-python.tar.gz`` /
``cifar-100-python.tar.gz`` (read in place) or their extracted ``cifar-10-batches-py/`` /
``cifar-100-python/`` folders.

Images are 32×32 and keep that size (raw encoding). The test set becomes ``val``. Label indices
are the dataset's own (CIFAR-100: the 100 fine labels); names come from ``batches.meta`` /
``meta``. The pickles are read with an unpickler that only admits the few numpy constructors they
use, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from alexnet.errors import UserError

from .base import Item, Source, archive_error, file_stamp, list_tar, open_tar, unsafe_member_name

LAYOUTS = {
    # variant: (folder, train files, test file, meta file, label key, names key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}
ARCHIVES = {"cifar-10-python.tar.gz": "cifar10", "cifar-100-python.tar.gz": "cifar100"}

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR pickle")
        return super().find_class(module, name)


def _load(data: bytes, where: str) -> dict[str, Any]:
    try:
        # The files are Python 2 pickles: encoding="bytes" keeps their str as bytes.
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # corrupt pickles raise many types
        raise UserError(f"{where}: unreadable CIFAR pickle ({e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: not a CIFAR pickle (a {type(obj).__name__}, expected a dict)")
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _variant_of(path: Path) -> str | None:
    name = path.name
    if name in ARCHIVES:
        return ARCHIVES[name]
    for v, lay in LAYOUTS.items():
        if name == lay[0]:
            return v
    return None


def find(path: Path) -> tuple[str, Path] | None:
    """(variant, file or folder) when ``path`` is, or directly holds, CIFAR data."""
    if _variant_of(path):
        return _variant_of(path), path  # type: ignore[return-value]
    if path.is_dir():
        for v, lay in LAYOUTS.items():
            if (path / lay[1][0]).is_file() and (path / lay[3]).is_file():
                return v, path  # the extracted folder itself, renamed
        for child in sorted(path.iterdir()):
            if _variant_of(child):
                return _variant_of(child), child  # type: ignore[return-value]
    elif path.is_file() and tarfile.is_tarfile(path):
        try:
            with tarfile.open(path, "r:*") as tf:
                first = tf.next()
        except (tarfile.TarError, OSError, EOFError):
            return None
        if first is not None:
            top = PurePosixPath(first.name).parts[0]
            for v, lay in LAYOUTS.items():
                if top == lay[0]:
                    return v, path
    return None


@dataclass
class CifarSource(Source):
    variant: str = "cifar10"
    _arrays: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = self.variant
        folder, train_files, test_file, meta_file, label_key, names_key = LAYOUTS[self.variant]
        wanted = [*train_files, test_file, meta_file]
        files = self._read_files(wanted)
        meta = _load(files[meta_file], f"{self.path}:{meta_file}")
        if names_key not in meta:
            raise UserError(f"{self.path}:{meta_file}: no {names_key!r}")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
        self.classes, self.class_names = names, list(names)
        self.native_size = (32, 32)

        def batch(fname: str) -> tuple[np.ndarray, np.ndarray]:
            d = _load(files[fname], f"{self.path}:{fname}")
            if "data" not in d or label_key not in d:
                raise UserError(f"{self.path}:{fname}: no 'data' or {label_key!r}")
            x, y = np.asarray(d["data"]), np.asarray(d[label_key], dtype=np.int64)
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
                raise UserError(f"{self.path}:{fname}: expected uint8 N×3072 data and N labels, "
                                f"got {x.dtype} {x.shape} and {len(y)}")
            if len(y) and (y.min() < 0 or y.max() >= len(names)):
                raise UserError(f"{self.path}:{fname}: labels outside 0..{len(names) - 1}")
            # Each row holds the red, green and blue 32×32 planes: N×3072 -> N×3×32×32 -> N×32×32×3
            return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y

        parts = [batch(f) for f in train_files]
        self._arrays = {"train": (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])),
                        "val": batch(test_file)}

    def _read_files(self, wanted: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        if self.path.is_dir():
            for w in wanted:
                p = self.path / w
                if not p.is_file():
                    raise UserError(f"{self.path}: missing {w}")
                out[w] = p.read_bytes()
            return out
        with open_tar(self.path, "CIFAR archive") as tf:
            for m in list_tar(tf, self.path, "CIFAR archive"):
                base = PurePosixPath(m.name).name
                if base in wanted and m.isfile() and not unsafe_member_name(m.name):
                    try:
                        out[base] = tf.extractfile(m).read()  # type: ignore[union-attr]
                    except (tarfile.TarError, OSError, EOFError) as e:
                        raise UserError(f"{self.path}: unreadable CIFAR archive ({archive_error(e)})") from None
        missing = [w for w in wanted if w not in out]
        if missing:
            raise UserError(f"{self.path}: archive lacks {', '.join(missing)}")
        return out

    def count(self, split: str) -> int | None:
        return len(self._arrays[split][1])

    def items(self, split: str, after: Any = None) -> Iterator[tuple[Any, Item]]:
        x, y = self._arrays[split]
        for k in range(0 if after is None else int(after) + 1, len(y)):
            yield k, Item(f"{split}[{k}]", int(y[k]), x[k])

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "val": "the test set"}

    def fingerprint(self) -> dict[str, Any]:
        if self.path.is_file():
            return {"kind": self.kind, "path": file_stamp(self.path)}
        # An extracted folder: every batch file's size and modification time, not just the name.
        return {"kind": self.kind, "path": str(self.path.resolve()),
                "files": [file_stamp(f) for f in sorted(self.path.iterdir()) if f.is_file()]}
