"""The models behind ``hubconf.py``'s ``torch.hub`` entry points.

``build(name, num_classes, weights=..., **options)`` is :func:`alexnet.models.create` plus weights:
a path or an http(s) URL to this project's ``.safetensors`` (a run's ``model.safetensors`` or an
``alexnet export --format safetensors`` file), or torchvision's ``alexnet-owt-*.pth`` for
``alexnet-owt``. URLs are fetched once into torch.hub's cache, keyed by the whole URL
(``torch.hub.get_dir()/checkpoints/url-<sha256 of the URL>/<file name>``: two URLs that end in the
same file name never share a file), with ``torch.hub.download_url_to_file``; what arrives is
checked to be a weights file (a server's HTML error page is not), and a download that is not, or
that cannot be loaded, is removed from the cache rather than kept for the next call; ``.pth``
files are opened with ``weights_only=True``.

A model built from weights carries what using it needs, outside its state_dict: ``model.meta``
(classes, class names, input size, ``input_norm``, the stored image size, and for our own runs the
recipe, metrics and git commit) and ``model.data_stats`` (the training set's mean image and RGB
eigenvectors, which the paper's network subtracts from its input, §2), or ``None`` for torchvision's
weights, which use fixed per-channel statistics.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet import models
from alexnet.errors import UserError

# ImageNet's 1000 classes for the ImageNet networks, CIFAR-10's 10 for the small ones.
DEFAULT_CLASSES = {"alexnet": 1000, "alexnet-owt": 1000, "alexnet-cifar": 10, "lenet5": 10}


def cache_path(url: str) -> Path:
    """Where the download of ``url`` is kept: one folder per URL, the file keeping its name."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(torch.hub.get_dir()) / "checkpoints" / f"url-{key}" / name


def _check_download(path: Path, url: str) -> None:
    """A downloaded file must look like weights (a safetensors header, a torch zip archive or a
    legacy pickle); anything else (an HTML error page) is removed and refused."""
    with open(path, "rb") as f:
        head = f.read(16)
    ok = head[:1] == b"\x80" or zipfile.is_zipfile(path)
    if path.suffix == ".safetensors":
        n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
        ok = 0 < n < path.stat().st_size and head[8:9] == b"{"
    if not ok:
        path.unlink(missing_ok=True)
        shown = head.decode("latin-1").split("\n")[0][:16]
        raise UserError(f"{url}: the download is not a weights file (it begins {shown!r}); nothing was kept")


def fetch(weights: str | os.PathLike[str], *, progress: bool = True, check_hash: bool = False) -> Path:
    """A local file as it is; a URL downloaded into torch.hub's cache (reused when already there).
    ``check_hash``: the file name carries the first digits of its sha256 after a dash, as
    torchvision's ``alexnet-owt-7be5be79.pth`` does; a download that does not match is refused."""
    text = os.fspath(weights)
    if urllib.parse.urlparse(text).scheme in ("http", "https"):
        name = os.path.basename(urllib.parse.urlparse(text).path)
        if not name:
            raise UserError(f"{text}: the URL names no file")
        cached = cache_path(text)
        if not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            prefix = None
            if check_hash:
                m = torch.hub.HASH_REGEX.search(name)
                if m is None:
                    raise UserError(f"{text}: check_hash needs a file name ending in -<sha256 prefix>.<ext>")
                prefix = m.group(1)
            try:
                torch.hub.download_url_to_file(text, str(cached), prefix, progress=progress)
            except RuntimeError as e:  # a hash mismatch
                raise UserError(f"{text}: {str(e).splitlines()[0][:200]}") from None
            except OSError as e:  # urllib's errors (HTTP status, refused connection) are OSErrors
                raise UserError(f"{text}: cannot download ({getattr(e, 'reason', e)})") from None
            _check_download(cached, text)
        return cached
    path = Path(text).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    return path


def build(name: str, num_classes: int | None = None, *, weights: str | os.PathLike[str] | None = None,
          progress: bool = True, check_hash: bool = False, **options: Any) -> nn.Module:
    """``models.create(name, num_classes, **options)``, or the model stored in ``weights`` (then
    ``num_classes`` and ``options``, where given, must agree with the file: a mismatch is refused
    rather than silently ignored)."""
    if weights is None:
        return models.create(name, DEFAULT_CLASSES[name] if num_classes is None else num_classes, **options)
    from alexnet.engine.inference import load

    path = fetch(weights, progress=progress, check_hash=check_hash)
    try:
        trained = load(path, "cpu")
    except UserError as e:
        if path != Path(os.fspath(weights)).expanduser():  # a download: never kept for the next call
            path.unlink(missing_ok=True)
            raise UserError(f"{e}; removed from the cache ({weights})") from None
        raise
    meta = trained.meta
    if meta["model"] != name:
        raise UserError(f"{weights}: holds weights of {meta['model']!r}, not {name!r}; load it with the "
                        f"{meta['model'].replace('-', '_')!r} entry point")
    if num_classes is not None and num_classes != meta["num_classes"]:
        raise UserError(f"{weights}: has {meta['num_classes']} classes, not num_classes={num_classes}")
    stored = meta.get("model_options") or {}
    defaults = _option_defaults(name)
    for key, value in options.items():
        have = stored.get(key, defaults.get(key))
        if _normal(have) != _normal(value):
            raise UserError(f"{weights}: was trained with {key}={have!r}, not {value!r}")
    model = trained.model.eval()
    model.meta = dict(meta)  # type: ignore[assignment]
    model.data_stats = trained.stats  # type: ignore[assignment]
    return model


def _option_defaults(name: str) -> dict[str, Any]:
    """The options a model is built with when none are given (the class's, then the builder's)."""
    import inspect

    from alexnet.models.alexnet import OWT_OPTIONS

    sig = inspect.signature(models.info(name).cls.__init__)
    d = {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}
    return {**d, **OWT_OPTIONS} if name == "alexnet-owt" else d


def _normal(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v
