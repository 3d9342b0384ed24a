"""Datasets: the prepared format, sources, the built-in synthetic set, augmentation and the loader."""

from alexnet.data.format import DatasetError, PreparedDataset, is_prepared, read_meta

__all__ = ["DatasetError", "PreparedDataset", "is_prepared", "read_meta"]
