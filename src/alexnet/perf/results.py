"""A benchmark's results file: its numbers with where they came from (the machine and software of
:func:`alexnet.environment.environment`, the git SHA, the date), written atomically
(:func:`alexnet.files.atomic_write_text`), so that a run killed while writing leaves the previous
file whole, never half of one."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from alexnet.environment import environment
from alexnet.files import atomic_write_text


def slug(text: str, limit: int | None = None) -> str:
    """``text`` as a file-name part: lower case, runs of anything but letters and digits as one "-"
    ("NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"), at most ``limit`` characters."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit]


def device_name(env: Mapping[str, Any], device: torch.device) -> str:
    """What a result was measured on: the CUDA device's name, or the CPU's model, from ``env``."""
    return (env.get("cuda_device") if device.type == "cuda" else env.get("processor")) or device.type


def device_slug(env: Mapping[str, Any], device: torch.device, limit: int | None = None) -> str:
    """The device part of a results file's name: "cpu" on the CPU, else the GPU's name as a slug."""
    return "cpu" if device.type == "cpu" else slug(device_name(env, device), limit)


def results_path(folder: str | os.PathLike[str], stem: str, env: Mapping[str, Any]) -> Path:
    """``folder/<stem>-<YYYY-MM-DD>.json``, the date (UTC) the environment was probed."""
    return Path(folder) / f"{stem}-{str(env['date_utc'])[:10]}.json"


def write_results(path: str | os.PathLike[str], result: Mapping[str, Any],
                  env: Mapping[str, Any] | None = None) -> Path:
    """Write ``result`` to ``path`` as indented JSON, atomically, with its provenance: the keys
    ``environment`` (``env``, by default probed now), ``git_sha``, ``git_dirty`` and ``date`` (the
    environment's UTC date) are added where ``result`` does not already hold them. Returns the path."""
    env = dict(env) if env is not None else environment()
    doc = dict(result)
    for key, value in (("environment", env), ("git_sha", env.get("git_sha")), ("git_dirty", env.get("git_dirty")),
                       ("date", env.get("date_utc"))):
        doc.setdefault(key, value)
    path = Path(path)
    atomic_write_text(path, json.dumps(doc, indent=1, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    """Paths (a benchmark's parsed options hold some) as strings; anything else is an error."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


__all__ = ["device_name", "device_slug", "results_path", "slug", "write_results"]
