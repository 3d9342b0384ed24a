"""Turn a ``--data`` argument into a dataset: a prepared folder, or a shard export streamed
through litdata (a folder or ``s3://bucket/prefix``, :mod:`alexnet.data.stream`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alexnet.data.format import DatasetError, PreparedDataset, is_prepared
from alexnet.data.sources import synthetic
from alexnet.data.stream import StreamedSplit, is_shard_export
from alexnet.errors import UserError

BUILTIN = ("synthetic",)


def resolve_data(spec: str, input_size: int, *, seed: int = 0, stream: bool = False) -> Path | str:
    """``synthetic`` (the built-in set, built once into the cache at the size the model needs)
    or the path of a prepared dataset; with ``stream`` (training) also a shard export (a folder,
    or a URL kept as it is)."""
    if spec == "synthetic":
        return synthetic.cached(input_size, seed=seed)
    if is_shard_export(spec):
        if not stream:
            raise UserError(f"{spec}: a shard export is streamed by 'alexnet train' only; give a prepared dataset "
                            f"folder here")
        return spec if "://" in spec else Path(spec).expanduser()
    p = Path(spec).expanduser()
    if not p.exists():
        raise UserError(f"{spec}: no such dataset; give 'synthetic' or the folder of a prepared dataset")
    if not is_prepared(p):
        raise UserError(f"{spec}: not a prepared dataset; run 'alexnet prepare {spec} --out DIR' first, then use --data DIR")
    return p


def open_splits(root: Path | str) -> tuple[Any, Any]:
    """The train and val splits of ``root`` (:func:`resolve_data`'s answer)."""
    streamed = is_shard_export(root)
    split = StreamedSplit if streamed else PreparedDataset
    train = split(root, "train")
    try:
        val = split(root, "val")
    except DatasetError:
        raise UserError(f"{train.root if streamed else root}: has no 'val' split to evaluate on") from None
    return train, val

