"""Where and in which precision the network computes: the one device parser and the one map from
the ``amp`` setting to an autocast dtype."""

from __future__ import annotations

import torch

from alexnet.errors import UserError

# ``amp`` (config, CLI, benchmarks) -> autocast dtype; None: no autocast.
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; ``cuda`` means this process's
    GPU (``local_rank``) under torchrun. A bad or unavailable device is a :class:`UserError`."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UserError(f"device {spec!r} is not valid; accepted: auto, cpu, cuda, cuda:N") from None
    if dev.type not in ("cpu", "cuda"):  # mps, xpu, meta...: the engine's code paths are CPU and CUDA only
        raise UserError(f"device {spec!r}: not supported; accepted: auto, cpu, cuda, cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {spec!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def is_cuda(spec: str) -> bool:
    """Whether the device ``spec`` is a CUDA device on this machine (decides a recipe's "auto"
    fields: :func:`alexnet.config.resolve_auto`); a bad or unavailable device is a :class:`UserError`."""
    return pick_device(spec).type == "cuda"


def amp_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting; ``ValueError`` naming the accepted ones."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp {amp!r}: accepted: {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[amp]


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit machines


def keep_freed_cpu_memory() -> bool:
    """Let glibc's malloc serve tensors up to 32 MB from its heap and keep what is freed, for eager
    CPU training; returns whether it applied (glibc only; elsewhere nothing changes).

    By default glibc maps every allocation above ~128 KB to fresh pages and returns them at ``free``.
    An eager step allocates and frees each activation (4 MB for the CIFAR net's 32×32×32 maps at batch
    32) every step, so every elementwise op first takes a page fault per 4 KB it writes: on a 2-core
    VM three chained ops on such a tensor took 55 ms instead of 9 ms. PyTorch's CPU allocator has no
    cache of its own. The cost: the process keeps its peak heap until it exits."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**30))


__all__ = ["AMP_DTYPES", "amp_dtype", "is_cuda", "keep_freed_cpu_memory", "pick_device"]
