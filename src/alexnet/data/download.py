"""``alexnet download NAME --out DIR``: fetch an official archive, verify it, prepare it.

Datasets (the archives are kept in ``$ALEXNET_CACHE/downloads``, default
``~/.cache/alexnet/downloads``, so that preparing again at another size needs no new download):

* ``imagenette`` / ``imagewoof`` — fast.ai's 10-class ImageNet subsets (easy / dog breeds), the
  **320 px** builds (``imagenette2-320.tgz``, 326 MB; ``imagewoof2-320.tgz``, 313 MB): their
  shorter side is 320, above the 256 that §2 rescales to, so the full-size builds (1.5 GB, 1.3 GB)
  would only add download time. Prepared straight from the .tgz at 256×256, classes are the
  WNIDs (sorted) named by their ImageNet words.
* ``cifar10`` / ``cifar100`` — the "python version" archives from the University of Toronto.
* ``fashion-mnist`` — Zalando's four official IDX archives (Xiao, Rasul & Vollgraf 2017): 60,000
  training and 10,000 test images, 28×28 grey, padded to 32×32 by ``prepare`` (the IDX reader).
  Kept as ``downloads/fashion-mnist/*.gz``; each file is fetched, resumed and verified on its own.

Downloads are resumable (an HTTP Range request continues ``<file>.part``) and verified (md5 as
torchvision checks them, or sha256); a mismatch removes the file and is an error. The base URL can
be replaced (a mirror, or a local server in tests) by ``base_url`` or ``$ALEXNET_DOWNLOAD_BASE_URL``:
the archive's file name is appended to it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alexnet.errors import UserError

ENV_BASE_URL = "ALEXNET_DOWNLOAD_BASE_URL"
CHUNK = 1 << 20

IMAGENETTE_NAMES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck",
    "n03425413": "gas pump", "n03445777": "golf ball", "n03888257": "parachute",
}
IMAGEWOOF_NAMES = {
    "n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback", "n02088364": "beagle",
    "n02089973": "English foxhound", "n02093754": "Border terrier", "n02096294": "Australian terrier",
    "n02099601": "golden retriever", "n02105641": "Old English sheepdog", "n02111889": "Samoyed",
    "n02115641": "dingo",
}


@dataclass(frozen=True)
class Remote:
    filename: str
    base_url: str
    md5: str | None = None
    sha256: str | None = None
    fmt: str = "folder"
    names: dict[str, str] = field(default_factory=dict)
    about: str = ""
    # A dataset published as several files (Fashion-MNIST's four IDX archives): (file name, md5)
    # each, kept in the cache folder ``filename`` and prepared from that folder.
    files: tuple[tuple[str, str], ...] = ()


# Checksums: torchvision.datasets.CIFAR10/CIFAR100/Imagenette (md5 of the whole file); imagewoof's
# sha256 from the MLDatasets/DataDeps registry (fast.ai's own checks.txt hashes only a prefix).
DATASETS: dict[str, Remote] = {
    "imagenette": Remote("imagenette2-320.tgz", "https://s3.amazonaws.com/fast-ai-imageclas",
                         md5="3df6f0d01a2c9592104656642f5e78a3", names=IMAGENETTE_NAMES,
                         about="fast.ai Imagenette v2, 320 px: 10 easy ImageNet classes"),
    "imagewoof": Remote("imagewoof2-320.tgz", "https://s3.amazonaws.com/fast-ai-imageclas",
                        sha256="4e4905ed7643120daaf9bf3b2ef7f3a7e8396d9bdaf254a38c6f01f618b4973d",
                        names=IMAGEWOOF_NAMES, about="fast.ai Imagewoof v2, 320 px: 10 dog breeds"),
    "cifar10": Remote("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz",
                      md5="c58f30108f718f92721af3b95e74349a", fmt="cifar", about="CIFAR-10, python version"),
    "cifar100": Remote("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz",
                       md5="eb9058c3a382ffc7106e4002c42a8d85", fmt="cifar", about="CIFAR-100, python version"),
    # The official archives' md5 as torchvision.datasets.FashionMNIST checks them. (Debian's
    # dataset-fashion-mnist package recompresses the same IDX data: its .gz files have other md5s.)
    "fashion-mnist": Remote("fashion-mnist", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com", fmt="idx",
                            about="Fashion-MNIST: 10 classes of Zalando article images, 28x28 grey (padded to 32x32)",
                            files=(("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                                   ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
                                   ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                                   ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"))),
}


def cache_dir() -> Path:
    root = os.environ.get("ALEXNET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "alexnet")
    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"{root}: the cache ($ALEXNET_CACHE) is not a folder (a file is there); point it at a folder")
    return Path(root) / "downloads"


def url_of(name: str, base_url: str | None = None, filename: str | None = None) -> str:
    """The URL of dataset ``name``'s archive (or of its file ``filename``, for a multi-file dataset)."""
    remote = DATASETS[name]
    base = base_url or os.environ.get(ENV_BASE_URL) or remote.base_url
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.netloc):
        where = "--base-url" if base_url else (f"${ENV_BASE_URL}" if os.environ.get(ENV_BASE_URL) else "base URL")
        raise UserError(f"{where} {base!r}: not a URL; accepted: http://HOST/PATH, https://HOST/PATH or file:///PATH")
    return base.rstrip("/") + "/" + (filename or (remote.files[0][0] if remote.files else remote.filename))


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _expected(remote: Remote, checksum: str | None) -> tuple[str, str]:
    """(algorithm, hex digest); ``checksum`` (32 hex: md5, 64: sha256) overrides the built-in."""
    if checksum:
        c = checksum.strip().lower()
        if len(c) == 32:
            return "md5", c
        if len(c) == 64:
            return "sha256", c
        raise UserError(f"--checksum {checksum}: give an md5 (32 hex digits) or sha256 (64 hex digits)")
    return ("sha256", remote.sha256) if remote.sha256 else ("md5", remote.md5 or "")


def fetch(url: str, dest: Path, algo: str, digest: str, *, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (continued with a Range request when a
    previous attempt left one), verify its ``algo`` digest, then move it into place. One process
    at a time per file: a second one is refused rather than writing the same ``.part``."""
    from alexnet.files import ExclusiveLock

    dest.parent.mkdir(parents=True, exist_ok=True)
    with ExclusiveLock(dest.parent / f".{dest.name}.lock", dest):
        return _fetch(url, dest, algo, digest, progress=progress)


def _fetch(url: str, dest: Path, algo: str, digest: str, *, progress: bool = True) -> Path:
    from alexnet.progress import Progress

    if dest.exists():
        if _digest(dest, algo) == digest:
            return dest
        dest.unlink()  # a stale or damaged copy: fetch it again
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "alexnet-download/1"}
    if have:
        headers["Range"] = f"bytes={have}-"
    complete = False
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            complete = True  # nothing past what we have: the .part is the whole file
        else:
            raise UserError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"{url}: cannot download ({getattr(e, 'reason', e)})") from None
    if not complete:
        with resp:
            status = getattr(resp, "status", None)
            if have and status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                mode = "ab"  # the server continues where the last attempt stopped
            else:
                have, mode = 0, "wb"  # no range support: start again
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            bar = Progress(total, dest.name, "B", initial=have, enabled=progress, file=sys.stderr, unit_scale=True,
                           unit_divisor=1024)
            try:
                with open(part, mode) as f:
                    for block in iter(lambda: resp.read(CHUNK), b""):
                        f.write(block)
                        bar.update(len(block))
            except (OSError, urllib.error.URLError) as e:
                raise UserError(f"{url}: download interrupted ({e}); rerun to resume from {part}") from None
            finally:
                bar.close()
            if total is not None and part.stat().st_size != total:
                raise UserError(f"{url}: download interrupted at {part.stat().st_size} of {total} bytes; "
                                f"rerun to resume from {part}")
    got = _digest(part, algo)
    if got != digest:
        part.unlink()
        raise UserError(f"{url}: {algo} checksum mismatch ({got}, expected {digest}); the download was removed")
    os.replace(part, dest)
    return dest


def download(name: str, out: str | os.PathLike[str], *, base_url: str | None = None, progress: bool = True,
             cache: str | os.PathLike[str] | None = None, checksum: str | None = None,
             size: int | None = None, workers: int | None = None) -> Path:
    """Download dataset ``name`` (one of DATASETS), verify it, and prepare it into ``out``."""
    if name not in DATASETS:
        raise UserError(f"{name}: unknown dataset; available: {', '.join(DATASETS)}")
    out = Path(out).expanduser()
    url = url_of(name, base_url)
    # The dataset's lock from the start: a second download into the same --out is refused before
    # it downloads anything.
    # Imported here, not at the top: `alexnet download --help` lists DATASETS without loading torch.
    from alexnet.data.writer import lock_dataset

    lock = lock_dataset(out)
    try:
        return _download(name, out, url, lock, progress=progress, cache=cache, checksum=checksum, size=size,
                         workers=workers)
    finally:
        lock.release()


def _download(name: str, out: Path, url: str, lock: Any, *, progress: bool, cache: str | os.PathLike[str] | None,
              checksum: str | None, size: int | None, workers: int | None) -> Path:
    from alexnet.data.writer import check_destination
    from alexnet.data.prepare import prepare

    # Refuse before spending minutes on a download that could not be prepared.
    check_destination(out)
    remote = DATASETS[name]
    folder = Path(cache).expanduser() if cache is not None else cache_dir()
    if remote.files:
        if checksum:
            raise UserError(f"--checksum: {name} is {len(remote.files)} files, each with its own checksum; "
                            "--checksum applies to single-archive datasets only")
        base = url.rsplit("/", 1)[0]
        for fname, md5 in remote.files:
            fetch(f"{base}/{fname}", folder / remote.filename / fname, "md5", md5, progress=progress)
        if progress:
            print(f"{folder / remote.filename}: {len(remote.files)} files verified (md5); preparing", file=sys.stderr)
        return prepare(folder / remote.filename, out, fmt=remote.fmt, names=remote.names or None, progress=progress,
                       size=size, workers=workers, lock=lock)
    algo, digest = _expected(remote, checksum)
    archive = fetch(url, folder / remote.filename, algo, digest, progress=progress)
    if progress:
        print(f"{archive}: verified ({algo}); preparing", file=sys.stderr)
    return prepare(archive, out, fmt=remote.fmt, names=remote.names or None, progress=progress, size=size,
                   workers=workers, lock=lock)


def describe() -> list[dict[str, Any]]:
    return [{"name": k, "file": ", ".join(f for f, _ in v.files) if v.files else v.filename, "url": url_of(k),
             "about": v.about} for k, v in DATASETS.items()]
