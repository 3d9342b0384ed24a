"""Training from a shard export (:mod:`alexnet.data.shards`) through litdata's StreamingDataset:
a local folder or ``s3://bucket/prefix``, chunks downloaded into a local cache as they are needed.

:class:`StreamedSplit` stands where :class:`~alexnet.data.format.PreparedDataset` stands for the
training loop and evaluation (classes, class names, image size, labels, statistics), and
:class:`StreamLoader` where :class:`~alexnet.data.loader.BatchLoader` does. What differs from
the local format, exactly:

* **Order.** The training order is litdata's shard-aware shuffle, not the local format's global
  permutation: per (seed, epoch) the chunks are permuted and assigned to the processes, and the
  records inside each chunk shuffled. It is deterministic for a given (seed, epoch, processes,
  per-process batch), and every epoch sees each record at most once (litdata's ``drop_last``
  leaves out the tail that makes no equal share per process, as the local loader leaves out the
  last partial batch). The samples, labels and positions (the augmentation's key) are the local
  format's, byte for byte.
* **Resume.** ``iterate(start_batch)`` resumes inside an epoch through litdata's own state
  (``state_dict``/``load_state_dict``, ``sample_in_epoch``): the rest of the epoch is exactly
  the batches an uninterrupted run would have had, at the same number of processes.
* **Decoding** happens in the training process (litdata's threads download chunks ahead); the
  local loader's decoding workers and nvJPEG path do not apply: ``decode="auto"`` decodes on the
  CPU (as it does on a machine without a GPU), ``decode="cuda"`` and a ``train_subset`` are refused.

Evaluation reads its split in stored order by random access (``StreamingDataset[i]``), each
process its contiguous shard, every image exactly once, as the local loader does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from alexnet.data.format import DatasetError, MetaClasses, PreparedDataset, decode_record, read_stats
from alexnet.data.loader import Batch, BatchLoader, shard
from alexnet.data.object_store import Store, endpoint_url, is_url, open_store
from alexnet.errors import UserError
from alexnet.files import atomic_write_bytes

# The export's files (:mod:`alexnet.data.shards` writes them; this reader does not import the writer).
MANIFEST = "alexnet-shards.json"  # written last: the export is complete
PARTIAL = ".alexnet-shards.partial"  # written first: the prefix is an export's, not yet complete
LOCK = ".alexnet-shards.lock"  # the exporter's lock (a conditional write on S3)
FORMAT_NAME = "alexnet-shards"
FORMAT_VERSION = 1


def is_shard_export(spec: str | os.PathLike[str]) -> bool:
    """A URL (checked when opened) or a local folder holding a finished export."""
    return is_url(spec) or (Path(spec).expanduser() / MANIFEST).is_file()


def cache_root() -> Path:
    """Where streamed chunks are kept: $ALEXNET_CACHE/streams (default ~/.cache/alexnet/streams)."""
    root = os.environ.get("ALEXNET_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                           "alexnet")
    return Path(root) / "streams"


def read_manifest(store: Store) -> dict[str, Any]:
    raw = store.read(MANIFEST)
    if raw is None:
        if store.read(PARTIAL) is not None:
            raise DatasetError(f"{store.url}: an incomplete shard export (interrupted); rerun 'alexnet shard' to it")
        raise DatasetError(f"{store.url}: not a shard export (no {MANIFEST}); make one with "
                           f"'alexnet shard DATASET --out {store.url}'")
    try:
        m = json.loads(raw.decode("utf-8"))
    except ValueError as e:
        raise DatasetError(f"{store.child(MANIFEST)}: unreadable ({str(e)[:160]})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME or not isinstance(m.get("meta"), dict):
        raise DatasetError(f"{store.child(MANIFEST)}: not an {FORMAT_NAME} manifest")
    if int(m.get("version", 0)) > FORMAT_VERSION:
        raise DatasetError(f"{store.child(MANIFEST)}: format version {m.get('version')} is newer than this tool ({FORMAT_VERSION})")
    return m


def _litdata() -> Any:
    try:
        import litdata
    except ImportError:
        raise UserError("streaming a shard export needs litdata: pip install 'alexnet[stream]'") from None
    return litdata


def _plain_http_downloads() -> None:
    """litdata (0.2.x) downloads chunks through obstore, which it builds without ``allow_http``:
    a plain-http endpoint (a local MinIO, a test server) is then unreachable. For such an
    endpoint only, its downloads go through its boto3 path instead (marking obstore as owned by
    no process, which is what litdata itself does after a fork)."""
    ep = endpoint_url()
    if ep and ep.startswith("http://"):
        try:
            from litdata.streaming import downloader
        except ImportError:
            return
        if hasattr(downloader, "_OBSTORE_INIT_PID"):
            downloader._OBSTORE_INIT_PID = -1


class _Decode:
    """litdata's item -> (uint8 3×H×W tensor, label, position); picklable."""

    def __init__(self, encoding: str, image_size: tuple[int, int]) -> None:
        self.encoding, self.image_size = encoding, image_size

    def __call__(self, item: dict[str, Any]) -> tuple[torch.Tensor, int, int]:
        return decode_record(bytes(item["record"]), self.encoding, self.image_size), int(item["label"]), int(item["index"])


class StreamedSplit(MetaClasses):
    """One split of a shard export: the parts of
    :class:`~alexnet.data.format.PreparedDataset` that training and evaluation read."""

    def __init__(self, spec: str | os.PathLike[str], split: str = "train") -> None:
        _litdata()
        self.store = open_store(spec)
        self.root = self.store.url
        manifest = read_manifest(self.store)
        self.meta: dict[str, Any] = dict(manifest["meta"])
        splits, classes = self.meta.get("splits"), self.meta.get("classes")
        if not isinstance(splits, dict) or not isinstance(classes, list) or not classes:
            raise DatasetError(f"{self.store.child(MANIFEST)}: damaged (no 'splits' or 'classes'); export again")
        self.meta.setdefault("class_names", list(classes))
        if split not in splits or split not in manifest.get("splits", {}):
            raise DatasetError(f"{self.root}: no split {split!r}; it has {', '.join(manifest.get('splits', {}))}")
        self.split = split
        info = splits[split]
        self.encoding: str = info["encoding"]
        self.image_size: tuple[int, int] = (int(info["image_size"][0]), int(info["image_size"][1]))
        self.count = int(manifest["splits"][split]["count"])
        key = hashlib.sha256(f"{self.root}\n{manifest.get('export_id')}".encode()).hexdigest()[:16]
        self.cache = cache_root() / key
        self.labels = self._labels()
        self._random_access: Any = None

    def _fetch(self, name: str) -> Path:
        """``name`` of the export, downloaded once into the cache (a local export is read in place)."""
        if not is_url(self.root):
            return Path(self.root) / name
        local = self.cache / name
        if not local.is_file():
            data = self.store.read(name)
            if data is None:
                raise DatasetError(f"{self.store.child(name)}: missing from the export; export again")
            local.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(local, data)
        return local

    def _labels(self) -> np.ndarray:
        path = self._fetch(f"{self.split}/labels.npy")
        try:
            labels = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: unreadable labels ({str(e)[:160]})") from None
        if labels.dtype != np.int64 or labels.shape != (self.count,):
            raise DatasetError(f"{path}: {labels.shape} {labels.dtype} labels, the manifest says {self.count}; export again")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DatasetError(f"{path}: a label outside the {self.num_classes} classes; export again")
        return labels

    def __len__(self) -> int:
        return self.count

    def stats(self) -> dict[str, torch.Tensor]:
        return read_stats(self._fetch("stats.safetensors"), self.image_size)

    def streaming_dataset(self, *, shuffle: bool, seed: int = 0) -> Any:
        """litdata's StreamingDataset over this split (chunks cached under :func:`cache_root`)."""
        litdata = _litdata()
        _plain_http_downloads()
        ep = endpoint_url()
        # A cache per process: litdata's cache is not safe for two processes filling one folder at once
        # (one may find the other's index.json half-fetched), and the processes read disjoint chunks anyway.
        rank = os.environ.get("RANK", "0")
        cache = self.cache / self.split / f"rank{rank}" if is_url(self.root) else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        try:
            return litdata.StreamingDataset(self.store.child(self.split), cache_dir=str(cache) if cache else None,
                                            shuffle=shuffle, seed=seed, drop_last=True if shuffle else None,
                                            storage_options={"endpoint_url": ep} if ep and is_url(self.root) else None,
                                            transform=_Decode(self.encoding, self.image_size))
        except Exception as e:  # litdata raises its own errors for an unreadable index
            raise DatasetError(f"{self.store.child(self.split)}: cannot be streamed ({str(e).splitlines()[0][:200]})") from None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self._random_access is None:
            self._random_access = self.streaming_dataset(shuffle=False)
        img, label, pos = self._random_access[int(i)]
        if pos != i or label != self.labels[i]:
            raise DatasetError(f"{self.store.child(self.split)}: record {i} holds position {pos}, label {label}; "
                               f"the export is damaged: export again")
        return img, label


class StreamLoader:
    """:class:`~alexnet.data.loader.BatchLoader`'s interface over a :class:`StreamedSplit`:
    ``set_epoch``, ``len``, ``iterate(start_batch)``, ``close``. See the module's docstring for
    what differs from the local loader."""

    def __init__(self, ds: StreamedSplit, batch_size: int, *, shuffle: bool, seed: int = 0, workers: int = -1,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False, limit_batches: int = 0,
                 subset: int = 0, decode: str = "cpu", device: torch.device | str | None = None,
                 gpu_fraction: float | None = None, prefetch: int = 2) -> None:
        if batch_size % world_size:
            raise UserError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        if subset > 0:
            raise UserError(f"train_subset={subset}: a streamed dataset is read whole; export a smaller dataset instead")
        if decode == "cuda":  # "auto" means the best at hand, as on a machine without a GPU: the CPU
            raise UserError("decode=cuda: a streamed dataset is decoded on the CPU in the training process; "
                            "use decode=cpu or auto")
        self.ds, self.batch_size, self.shuffle, self.seed = ds, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.limit_batches = limit_batches
        self.workers = 0
        # What the caller should print: settings that cannot take effect here.
        self.notes: list[str] = []
        if workers > 0:
            self.notes.append(f"workers={workers}: a streamed dataset is decoded in the training process "
                              f"(litdata's threads download ahead); no loader workers are started")
        self.n = len(ds)
        self.epoch = 0
        self.per = batch_size // world_size if shuffle else max(1, batch_size // world_size)
        self._len: int | None = None
        self._lit: Any = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _train_dataset(self) -> Any:
        from litdata.utilities.env import _DistributedEnv

        if self._lit is None:  # one per loader: litdata builds an S3 client and reads the index per dataset
            self._lit = self.ds.streaming_dataset(shuffle=True, seed=self.seed)
            seen = _DistributedEnv.detect().world_size
            if seen != self.world_size:  # litdata shares the chunks among the processes it sees
                raise RuntimeError(f"litdata sees {seen} processes, the loader was built for {self.world_size}; "
                                   f"initialise torch.distributed before iterating")
        lit = self._lit
        lit.reset_state_dict()  # a resumed epoch's state must not carry into the next one
        lit.set_epoch(self.epoch + 1)  # litdata counts epochs from 1
        lit.set_batch_size(self.per)
        lit.set_num_workers(1)
        return lit

    def __len__(self) -> int:
        if not self.shuffle:
            mine = len(shard(np.arange(self.n), self.rank, self.world_size))
            return -(-mine // self.per)
        if self._len is None:
            # Each process's share of the epoch (equal in every process: drop_last), in full batches.
            self._len = int(self._train_dataset().get_len(1, self.per)) // self.per
        return min(self._len, self.limit_batches) if self.limit_batches > 0 else self._len

    def _batch(self, items: list[tuple[torch.Tensor, int, int]]) -> Batch:
        images = torch.stack([t for t, _, _ in items])
        labels = torch.tensor([lab for _, lab, _ in items], dtype=torch.int64)
        indices = torch.tensor([pos for _, _, pos in items], dtype=torch.int64)
        if bool((torch.from_numpy(self.ds.labels[indices.numpy()]) != labels).any()):
            raise DatasetError(f"{self.ds.store.child(self.ds.split)}: a record's label differs from labels.npy; "
                               f"the export is damaged: export again")
        if self.pin_memory:
            images, labels, indices = images.pin_memory(), labels.pin_memory(), indices.pin_memory()
        return Batch(images, labels, indices)

    def iterate(self, start_batch: int = 0) -> Iterator[Batch]:
        n_batches = len(self)
        if start_batch >= n_batches:
            return iter(())
        if not self.shuffle:
            return self._iterate_eval(start_batch)
        return self._iterate_train(start_batch, n_batches)

    def _iterate_train(self, start_batch: int, n_batches: int) -> Iterator[Batch]:
        lit = self._train_dataset()
        if start_batch:
            # litdata's own resume: the state after start_batch batches of this process.
            lit.load_state_dict(lit.state_dict(start_batch * self.per, 1, self.per))
        it = iter(lit)
        for b in range(start_batch, n_batches):
            items = []
            for _ in range(self.per):
                try:
                    items.append(next(it))
                except StopIteration:  # litdata said the epoch holds more: never a silently short epoch
                    raise RuntimeError(f"{self.ds.store.child(self.ds.split)}: litdata's stream ended inside batch "
                                       f"{b} of {n_batches}") from None
            yield self._batch(items)

    def _iterate_eval(self, start_batch: int) -> Iterator[Batch]:
        mine = shard(np.arange(self.n), self.rank, self.world_size)
        for b in range(start_batch, len(self)):
            idx = mine[b * self.per:(b + 1) * self.per]
            items = []
            for i in idx.tolist():
                img, label = self.ds[i]
                items.append((img, label, i))
            yield self._batch(items)

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate()

    def close(self) -> None:
        self.ds._random_access = None
        self._lit = None


def make_loader(ds: PreparedDataset | StreamedSplit, batch_size: int, **kw: Any) -> Any:
    """The loader of ``ds``: :class:`~alexnet.data.loader.BatchLoader` for a prepared folder,
    :class:`StreamLoader` for a shard export (the same interface and arguments)."""
    if isinstance(ds, StreamedSplit):
        return StreamLoader(ds, batch_size, **kw)
    return BatchLoader(ds, batch_size, **kw)
