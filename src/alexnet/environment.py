"""The machine and software a number came from: the one environment probe.

Training writes it to every run folder (``environment.json``), reports print it, and every
benchmark stores it with its results. Nothing here imports the rest of the package."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy
import torch

from alexnet import __version__

# The software versions among :func:`environment`'s keys, as benchmark rows name them (name -> key).
VERSION_KEYS = {"python": "python", "torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "pillow": "pillow",
                "triton": "triton", "scikit-image": "scikit-image", "cuda": "cuda_version", "cudnn": "cudnn",
                "driver": "driver", "alexnet": "alexnet"}
_REPO = Path(__file__).resolve().parent


def cpu_name() -> str:
    """The CPU model ("AMD EPYC 7763 64-Core Processor"); the architecture where none is known."""
    name = platform.processor()
    if not name or name in ("x86_64", "aarch64", "arm", "i386"):
        try:  # Linux leaves platform.processor() as the architecture; the model is in /proc/cpuinfo
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return name or platform.machine()


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_sha() -> str | None:
    """The commit of the checkout this package runs from (read-only; None outside a git checkout)."""
    return _run(["git", "rev-parse", "HEAD"], _REPO)


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - absent or broken: recorded as missing
        return None


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Platform, processor, CPU count and affinity, load, Python and library versions, the CUDA
    device (``device``, or the current one; None without CUDA) with its memory, SMs, CUDA, cuDNN and
    driver versions, the package's git commit and whether the checkout has local changes (None
    outside a checkout), and the UTC date."""
    cuda: dict[str, Any] = {"cuda_device": None, "gpu_memory_gib": None, "gpu_sms": None, "cuda_version": None,
                            "cudnn": None, "driver": None}
    try:
        dev = torch.device(device) if device is not None else None
        if (dev is None or dev.type == "cuda") and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(dev if dev is not None and dev.index is not None
                                                     else torch.cuda.current_device())
            driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
            cuda = {"cuda_device": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "gpu_sms": props.multi_processor_count, "cuda_version": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version(), "driver": driver.splitlines()[0].strip() if driver else None}
    except Exception:  # noqa: BLE001 - a broken driver must not stop a report
        pass
    # Dirty: a tracked file changed, or an untracked file among the sources. Untracked files elsewhere
    # (an experiment's results being written inside the checkout) are outputs, not the code that ran.
    status = (_run(["git", "status", "--porcelain", "--untracked-files=no"], _REPO) or "") + (
        _run(["git", "ls-files", "--others", "--exclude-standard", "--", "src", "configs"], _REPO) or "")
    sha = git_sha()
    return {
        "platform": platform.platform(),
        "host": platform.node(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": numpy.__version__,
        "pillow": _version("PIL"),
        "triton": _version("triton"),
        "scikit-image": _version("skimage"),
        **cuda,
        "alexnet": __version__,
        "git_sha": sha,
        "git_dirty": None if sha is None else bool(status),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def versions(env: dict[str, Any]) -> dict[str, Any]:
    """The software versions of an :func:`environment` dict."""
    return {name: env.get(key) for name, key in VERSION_KEYS.items()}


__all__ = ["VERSION_KEYS", "cpu_name", "environment", "git_sha", "versions"]
