"""Checkpoints (atomic, loaded with ``weights_only=True``) and weights as safetensors.

A checkpoint is a plain dict of tensors and primitives, so ``torch.load(weights_only=True)``
opens it and a file crafted to run code on unpickling is refused, its code never run.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.errors import UserError

CKPT_DIR = "checkpoints"
WEIGHTS = "model.safetensors"
_CKPT_RE = re.compile(r"ckpt-(\d+)\.pt$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any) -> None:
    """``write(f)`` into a temporary file beside ``path``, fsync, rename over ``path``. A failure
    (a full disk) leaves any previous file at ``path`` untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_checkpoint(run: Path, state: dict[str, Any], step: int, keep: int = 2) -> Path:
    path = run / CKPT_DIR / f"ckpt-{step:09d}.pt"
    atomic_write(path, lambda f: torch.save(state, f))
    for old in list_checkpoints(run)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run: Path) -> list[Path]:
    d = run / CKPT_DIR
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _CKPT_RE.search(p.name)), key=lambda p: int(_CKPT_RE.search(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(run: Path) -> Path | None:
    ckpts = list_checkpoints(run)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and primitives only; anything else is refused."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "disallowed content"
        raise UserError(f"{path}: refused to load: not a plain weights checkpoint ({first[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not an alexnet checkpoint (a {type(obj).__name__}, expected a dict)")
    return obj


# -- weights -------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def save_weights(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """safetensors with the model's identity in the metadata (strings only)."""
    from safetensors.torch import save

    sd = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    data = save(sd, metadata={"alexnet": json.dumps(meta)})
    atomic_write(path, lambda f: f.write(data))


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("alexnet")
        sd = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:200]})") from None
    return sd, (json.loads(raw) if raw else {})
