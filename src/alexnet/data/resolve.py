"""Turn a ``--data`` argument into a prepared dataset folder."""

from __future__ import annotations

from pathlib import Path

from alexnet.data.format import DatasetError, PreparedDataset, is_prepared
from alexnet.data.sources import synthetic
from alexnet.errors import UserError

BUILTIN = ("synthetic",)


def resolve_data(spec: str, input_size: int, *, seed: int = 0) -> Path:
    """``synthetic`` (the built-in set, built once into the cache at the size the model needs)
    or the path of a prepared dataset."""
    if spec == "synthetic":
        return synthetic.cached(input_size, seed=seed)
    p = Path(spec).expanduser()
    if not p.exists():
        raise UserError(f"{spec}: no such dataset; give 'synthetic' or the folder of a prepared dataset")
    if not is_prepared(p):
        raise UserError(f"{spec}: not a prepared dataset; run 'alexnet prepare {spec} --out DIR' first, then use --data DIR")
    return p


def open_splits(root: Path) -> tuple[PreparedDataset, PreparedDataset]:
    train = PreparedDataset(root, "train")
    try:
        val = PreparedDataset(root, "val")
    except DatasetError:
        raise UserError(f"{root}: has no 'val' split to evaluate on") from None
    return train, val
