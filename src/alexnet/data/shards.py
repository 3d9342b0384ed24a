"""A prepared dataset (:mod:`alexnet.data.format`) exported to litdata's shards, in a local folder
or at ``s3://bucket/prefix``, for training that streams it (:mod:`alexnet.data.stream`).

An export is::

    ROOT/
      alexnet-shards.json     the completion marker, written last: format, version, the source's
                              meta.json (classes, class names, splits, image size, encoding),
                              per split its count; the litdata version that wrote it
      stats.safetensors       the source's training statistics (§2's mean image, §4.1's RGB PCA)
      <split>/index.json      litdata's index of the split's chunks
      <split>/chunk-*.bin     litdata's chunks: items {"index", "label", "record"}, in the
                              source's order; "record" is the source's record, byte for byte
      <split>/labels.npy      int64 labels in stored order (the selection half and the class
                              checks need them without reading the chunks)

The same guarantees as ``prepare``'s writer: it never writes over what it did not write (a
non-empty place without this module's partial marker is refused, and so is a finished export),
a concurrent exporter of the same place is refused (locally the dataset lock of
:func:`alexnet.data.writer.lock_dataset`; on S3 a lock object created with a conditional write,
If-None-Match, so the store decides which of two exporters wins), and an interrupted export is
never taken for a complete one (locally it is built in ``ROOT.partial`` and renamed into place;
on S3 ``.alexnet-shards.partial`` is written first and the marker last, and readers refuse a
prefix without the marker).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alexnet.data.format import DatasetError, PreparedDataset, read_meta
from alexnet.data.object_store import S3Store, is_url
from alexnet.data.stream import FORMAT_NAME, FORMAT_VERSION, LOCK, MANIFEST, PARTIAL
from alexnet.data.writer import lock_dataset
from alexnet.errors import UserError
from alexnet.files import BusyError, atomic_write_bytes, atomic_write_text, os_error_line

DEFAULT_CHUNK_BYTES = 64 * 2**20  # litdata's advice: chunks of tens of MB stream well


def _litdata() -> Any:
    try:
        import litdata
    except ImportError:
        raise UserError("shards are litdata's: pip install 'alexnet[stream]'") from None
    return litdata


def write_split_chunks(ds: PreparedDataset, folder: Path, chunk_bytes: int) -> int:
    """The split's records, in stored order, as litdata chunks in ``folder``; returns the count."""
    from litdata.streaming.writer import BinaryWriter

    folder.mkdir(parents=True, exist_ok=True)
    writer = BinaryWriter(str(folder), chunk_bytes=chunk_bytes)
    with warnings.catch_warnings():
        # A record larger than chunk_bytes gets a chunk of its own; litdata warns of it once per record.
        warnings.filterwarnings("ignore", message="An item was larger than the target chunk size")
        for i in range(len(ds)):
            writer.add_item(i, {"index": i, "label": int(ds.labels[i]), "record": ds.record(i).tobytes()})
        writer.done()
    writer.merge()
    np.save(folder / "labels.npy", ds.labels.astype(np.int64))
    return len(ds)


def _manifest(src: Path, meta: dict[str, Any], counts: dict[str, int], chunk_bytes: int) -> str:
    return json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "meta": meta,
                       "splits": {s: {"count": n} for s, n in counts.items()}, "chunk_bytes": chunk_bytes,
                       "litdata": _litdata().__version__, "source": str(src), "export_id": uuid.uuid4().hex,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n"


def _open_source(src: str | os.PathLike[str]) -> tuple[Path, dict[str, Any], list[PreparedDataset]]:
    root = Path(src).expanduser()
    meta = read_meta(root)  # one line for a missing, incomplete or foreign folder
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise DatasetError(f"{root / 'meta.json'}: damaged (no 'splits'); prepare the dataset again")
    dss = [PreparedDataset(root, s) for s in splits]
    if not (root / "stats.safetensors").is_file():
        raise DatasetError(f"{root}: no stats.safetensors; prepare the dataset again")
    return root, meta, dss


def export_shards(src: str | os.PathLike[str], out: str, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                  log: Callable[[str], None] = print) -> str:
    """Export the prepared dataset ``src`` to ``out`` (a folder or ``s3://bucket/prefix``);
    returns where it is."""
    if not str(out).strip():
        raise UserError("--out '': an empty path; give a folder or s3://BUCKET/PREFIX")
    if chunk_bytes < 1:
        raise UserError(f"chunk size {chunk_bytes}: must be at least 1 byte")
    _litdata()
    root, meta, dss = _open_source(src)
    if is_url(out):
        return _export_s3(root, meta, dss, S3Store(out), chunk_bytes, log)
    return _export_local(root, meta, dss, Path(out).expanduser(), chunk_bytes, log)


def _export_local(root: Path, meta: dict[str, Any], dss: list[PreparedDataset], out: Path, chunk_bytes: int,
                  log: Callable[[str], None]) -> str:
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise UserError(f"--out {out}: is the dataset {root} or inside it; choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if (out / MANIFEST).exists():
        raise UserError(f"--out {out}: already holds a shard export; remove it first or choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out}: exists and is not empty; choose another --out")
    lock = lock_dataset(out)  # the same lock as prepare's writer: one writer of `out` at a time
    tmp = Path(str(out) + ".partial")
    try:
        if tmp.exists():  # an interrupted export of ours (only an exporter holding the lock writes it)
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        counts = {}
        for ds in dss:
            counts[ds.split] = write_split_chunks(ds, tmp / ds.split, chunk_bytes)
            log(f"{ds.split}: {counts[ds.split]:,} records in {len(list((tmp / ds.split).glob('*.bin')))} chunks")
        atomic_write_bytes(tmp / "stats.safetensors", (root / "stats.safetensors").read_bytes())
        atomic_write_text(tmp / MANIFEST, _manifest(root, meta, counts, chunk_bytes))  # last: the folder is complete
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except OSError as e:
        raise UserError(f"--out {out}: cannot be written ({os_error_line(e)}); the partial export {tmp} is "
                        f"redone by the next run") from None
    finally:
        lock.release()
    return str(out)


def _export_s3(root: Path, meta: dict[str, Any], dss: list[PreparedDataset], store: S3Store, chunk_bytes: int,
               log: Callable[[str], None]) -> str:
    url = store.url
    names = store.names()  # the first request: a missing bucket, credentials or endpoint fail here, in one line
    if MANIFEST in names:
        raise UserError(f"--out {url}: already holds a shard export; delete it first or choose another prefix")
    if names and PARTIAL not in names and names != [LOCK]:
        raise UserError(f"--out {url}: holds {len(names)} objects that 'alexnet shard' did not write "
                        f"(e.g. {names[0]}); choose an empty prefix")
    token = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if not store.create(LOCK, token.encode()):
        held = store.read(LOCK) or b"{}"
        try:
            who = json.loads(held)
            desc = f" (host {who.get('host')}, pid {who.get('pid')}, since {who.get('since')})"
        except ValueError:
            desc = ""
        raise BusyError(f"--out {url}: another export is writing it{desc}; wait for it, or if none is running "
                        f"(it was killed), delete {url}/{LOCK}")
    try:
        store.write(PARTIAL, token.encode())  # from now on the prefix is ours, and incomplete
        for name in names:  # what an interrupted export of ours left
            if name not in (LOCK, PARTIAL):
                store.delete(name)
        counts = {}
        for ds in dss:
            with tempfile.TemporaryDirectory(prefix="alexnet-shard-") as staging:
                folder = Path(staging) / ds.split
                counts[ds.split] = write_split_chunks(ds, folder, chunk_bytes)
                files = sorted(folder.iterdir(), key=lambda p: (p.name == "index.json", p.name))  # the index last
                for f in files:
                    store.upload(f, f"{ds.split}/{f.name}")
            log(f"{ds.split}: {counts[ds.split]:,} records in {len(files) - 2} chunks")
        store.upload(root / "stats.safetensors", "stats.safetensors")
        if store.read(LOCK) != token.encode():  # someone removed our lock and took the prefix: write nothing more
            raise BusyError(f"--out {url}: its lock was taken by another export while this one wrote; "
                            f"the export is left incomplete")
        store.write(MANIFEST, _manifest(root, meta, counts, chunk_bytes).encode())  # last: the export is complete
        store.delete(PARTIAL)
    except OSError as e:
        raise UserError(f"--out {url}: the local staging folder cannot be written ({os_error_line(e)}); "
                        f"set TMPDIR to a place with room for one split") from None
    finally:
        try:
            if store.read(LOCK) == token.encode():
                store.delete(LOCK)
        except UserError:  # the store went away: the first error is the one to report
            pass
    return url

