"""Checkpoints (atomic, loaded with ``weights_only=True``) and weights as safetensors.

A checkpoint is a plain dict of tensors and primitives, so ``torch.load(weights_only=True)``
opens it and a file crafted to run code on unpickling is refused, its code never run. Every
command that reads weights or checkpoints goes through :func:`load_checkpoint`,
:func:`read_weights` or :func:`load_weights` (which dispatches on the file type).

Writes go to a temporary file beside the target, are fsynced and renamed over it, so a crash or
a full disk at any moment leaves either the old file or the new one, never a torn one; old
checkpoints are deleted only after the new one is in place.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from alexnet import models
from alexnet.errors import UserError
from alexnet.files import TMP_SUFFIX, atomic_write, atomic_write_bytes, os_error_line

CKPT_DIR = "checkpoints"
WEIGHTS = "model.safetensors"
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(UserError):
    """A checkpoint could not be written or read."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk); the previous one is intact."""


def remove_stale_temporaries(run: Path) -> None:
    """Temporary files a killed process left behind (never a complete checkpoint)."""
    d = run / CKPT_DIR
    for p in d.glob(f".ckpt-*{TMP_SUFFIX}") if d.is_dir() else []:
        p.unlink(missing_ok=True)


def checkpoint_path(run: Path, step: int) -> Path:
    return run / CKPT_DIR / f"ckpt-{step:09d}.pt"


def save_checkpoint(run: Path, state: dict[str, Any], step: int, keep: int = 2) -> Path:
    """Write ``state`` atomically as checkpoint ``step``; keep the newest ``keep`` (0: all)."""
    path = checkpoint_path(run, step)
    previous = latest_checkpoint(run)
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as e:
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointWriteError(f"could not write the checkpoint: {os_error_line(e, path)}; {kept}") from None
    for old in list_checkpoints(run)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    d = run / CKPT_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run: Path) -> Path | None:
    ckpts = list_checkpoints(run)
    return ckpts[-1] if ckpts else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and primitives only; a file that would import or
    call anything on unpickling is refused with a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol chatter from the restricted unpickler
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message leads with generic advice (to pass weights_only=False: exactly what we
        # must not do); the line naming the refused global is the useful one.
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        why = next((s for s in lines if "GLOBAL" in s or "Unsupported" in s), lines[-1] if lines else "disallowed content")
        raise CheckpointError(f"{path}: refused to load: not a plain tensors-only checkpoint ({why[:200]})") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError, zipfile errors ... for damaged files
        raise CheckpointError(f"{path}: unreadable checkpoint ({_first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not an alexnet checkpoint (a {type(obj).__name__}, expected a dict)")
    return obj


# -- model state ---------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict in the single-device layout (a model-parallel AlexNet converts to the
    grouped model's keys; FC layers sharded by ``parallel=owt`` are gathered to full tensors, a
    collective that every process must call), so checkpoints and weights files do not depend on
    the placement."""
    m = unwrap(model)
    to_grouped = getattr(m, "grouped_state_dict", None)
    sd = to_grouped() if callable(to_grouped) else m.state_dict()
    return {k: _full(v) for k, v in sd.items()}


def _full(v: Any) -> Any:
    return v.full_tensor() if isinstance(v, DTensor) else v


def _like(ref: Any, v: Any) -> Any:
    """``v`` (a full tensor) cut to ``ref``'s shard where ``ref`` is a DTensor, else ``v``."""
    if isinstance(ref, DTensor) and isinstance(v, torch.Tensor) and not isinstance(v, DTensor):
        if tuple(v.shape) != tuple(ref.shape):
            raise RuntimeError(f"size mismatch: a tensor of {tuple(v.shape)} for a parameter of {tuple(ref.shape)}")
        return distribute_tensor(v.to(ref.device, ref.dtype), ref.device_mesh, ref.placements, src_data_rank=None)
    return v


def load_model_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    m = unwrap(model)
    from_grouped = getattr(m, "load_grouped_state_dict", None)
    if callable(from_grouped):
        from_grouped(sd)
    else:
        own = m.state_dict()
        m.load_state_dict({k: _like(own.get(k), v) for k, v in sd.items()})


def optimizer_state_dict(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with the state of sharded parameters (``parallel=owt``) gathered
    to full tensors (a collective where there are any): the same file whatever the layout."""
    sd = optimizer.state_dict()
    return {**sd, "state": {i: {k: _full(v) for k, v in st.items()} for i, st in sd["state"].items()}}


def load_optimizer_state_dict(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """:func:`optimizer_state_dict`'s inverse: full tensors cut to the shards of sharded parameters."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i, st in sd["state"].items():
        ref = params[int(i)] if int(i) < len(params) else None
        state[i] = {k: _like(ref, v) if isinstance(v, torch.Tensor) and v.ndim > 0 else v for k, v in st.items()}
    optimizer.load_state_dict({**sd, "state": state})


# -- weights -------------------------------------------------------------------------------------


# The training set's statistics (§2's mean image, §4.1's RGB eigenvectors) travel inside the weights
# file under this prefix, so that predict and export need no dataset; they are not model parameters.
STATS_PREFIX = "_data_stats."


def save_weights(model: nn.Module, path: Path, meta: dict[str, Any], stats: dict[str, torch.Tensor] | None = None,
                 written_by: str | None = None) -> None:
    """safetensors with the model's identity in the metadata (strings only) and, when given, the
    training set's statistics (``mean``, ``eigval``, ``eigvec``) as extra tensors; ``written_by``
    (metadata ``written_by``) names the command that wrote it, for :func:`written_by`."""
    from safetensors.torch import save

    sd = {k: v.detach().cpu().contiguous() for k, v in model_state_dict(model).items()}
    sd.update({STATS_PREFIX + k: v.detach().cpu().float().contiguous() for k, v in (stats or {}).items()})
    data = save(sd, metadata={"alexnet": json.dumps(meta), **({"written_by": written_by} if written_by else {})})
    atomic_write_bytes(path, data)


def written_by(path: str | Path) -> str | None:
    """The command named in a safetensors file's ``written_by`` metadata (None: none, or not a
    safetensors file)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("written_by")
    except Exception:  # safetensors raises its own error type for a file that is not one
        return None


def split_stats(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """A weights file's tensors as (model state_dict, training-set statistics or None)."""
    stats = {k[len(STATS_PREFIX):]: v for k, v in sd.items() if k.startswith(STATS_PREFIX)}
    return {k: v for k, v in sd.items() if not k.startswith(STATS_PREFIX)}, (stats or None)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A safetensors weights file's tensors (the state_dict and any training-set statistics, see
    :func:`split_stats`) and its alexnet metadata; a damaged file is a one-line error."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("alexnet")
        sd = load_file(str(path))
        meta = json.loads(raw) if raw else {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its alexnet metadata is not a JSON object")
    return sd, meta


def read_model_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]]:
    """A weights file this project wrote: the model's state_dict, the training set's statistics
    (or None) and the metadata that rebuilds the model; a file without that metadata is refused."""
    sd, meta = read_weights(path)
    sd, stats = split_stats(sd)
    if "model" not in meta:
        raise UserError(f"{path}: safetensors file without alexnet metadata (model name, classes)")
    return sd, stats, meta


def model_from_weights(meta: dict[str, Any], sd: dict[str, torch.Tensor], source: str | Path) -> nn.Module:
    """The network ``meta`` names (model, num_classes, model_options) holding the weights ``sd``;
    weights that do not fit it are a one-line error naming ``source``."""
    try:
        model = models.create(meta["model"], meta["num_classes"], **meta.get("model_options", {}))
        model.load_state_dict(sd)
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise UserError(f"{source}: weights do not fit model {meta.get('model')!r} ({str(e).splitlines()[0][:200]})") from None
    return model


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Model weights from a ``.safetensors`` file, a training checkpoint or a plain ``.pt``/``.pth``
    state_dict (both read with ``weights_only=True``): ``(state_dict, metadata)``; metadata is
    empty where the file has none."""
    path = Path(path)
    if path.suffix == ".safetensors":
        sd, meta = read_weights(path)
        return split_stats(sd)[0], meta
    d = load_checkpoint(path)
    if isinstance(d.get("model"), dict):  # a training checkpoint
        try:
            meta = json.loads(d["meta"]) if isinstance(d.get("meta"), str) else {}
        except json.JSONDecodeError:
            meta = {}
        d = d["model"]
    else:
        meta = {}
    if not all(isinstance(v, torch.Tensor) for v in d.values()):
        raise CheckpointError(f"{path}: not a state_dict of tensors")
    return d, meta
