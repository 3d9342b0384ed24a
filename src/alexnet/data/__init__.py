"""Datasets: the prepared format, sources, the built-in synthetic set, augmentation and the loader.

The names below are loaded when first used (PEP 562), so that importing a submodule that needs no
torch (a source's name list for ``alexnet prepare --help``) does not load the prepared format."""

from typing import Any

__all__ = ["DatasetError", "PreparedDataset", "is_prepared", "read_meta"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from alexnet.data import format

        return getattr(format, name)
    raise AttributeError(f"module 'alexnet.data' has no attribute {name!r}")
