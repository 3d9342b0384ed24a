"""The GPU machine's first check, in seconds: versions, shared memory, the GPU, the LRN op and one
compiled training step at the paper's shapes. On a machine without a GPU it still runs (on the CPU,
at batch 2, compiled with dynamo's eager backend) and says there is no GPU."""

from __future__ import annotations

import shutil
import time
from typing import Callable

import torch

from alexnet import models
from alexnet.engine.device import AMP_DTYPES
from alexnet.environment import environment
from alexnet.models import lrn_fast
from alexnet.models.layers import PAPER_LRN
from alexnet.perf.steps import make_step, random_batch, random_stats

# A loader holds workers × prefetch batches of 256 uint8 256×256 images in shared memory (~50 MB a
# batch): 15 workers × 2 × 50 MB ≈ 1.5 GB, with the pinned staging and the allocator's slack ~2 GB.
SHM_NEEDED_GIB = 2.0


def _shm() -> tuple[bool, str]:
    try:
        du = shutil.disk_usage("/dev/shm")
    except OSError as e:
        return False, f"/dev/shm is not usable ({e.strerror}): the loader's workers cannot share batches"
    total, free = du.total / 2**30, du.free / 2**30
    text = f"/dev/shm {total:.1f} GiB, {free:.1f} GiB free"
    if free < SHM_NEEDED_GIB:
        return False, (f"{text}: the loader needs ~{SHM_NEEDED_GIB:.0f} GiB at 15 workers; enlarge it (docker run "
                       "--shm-size=16g, or mount -o remount,size=16G /dev/shm) or lower --workers")
    return True, text


def _lrn(device: torch.device, batch: int) -> str:
    p = PAPER_LRN
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(batch, 96, 55, 55, generator=gen) * 10).clamp_min_(0).to(device).requires_grad_()
    y = lrn_fast.local_response_norm(x, p["size"], p["alpha"], p["beta"], p["k"])
    y.backward(torch.ones_like(y))
    ref = lrn_fast.lrn_plain(x.detach(), p["size"], p["alpha"], p["beta"], p["k"])
    err = float(((y.detach() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).cpu())
    if not err < 1e-5 or not bool(torch.isfinite(x.grad).all()):
        raise RuntimeError(f"LRN differs from the plain formula by {err:.1e} (relative) or its gradient is not finite")
    mode = lrn_fast.mode()
    impl = "triton" if mode == "triton" or (mode == "auto" and lrn_fast.triton_applies(x)) else "plain"
    return f"{impl}, {batch}×96×55×55 forward + backward, max rel. error vs plain {err:.1e}"


def _compiled_step(device: torch.device, batch: int) -> str:
    cuda = device.type == "cuda"
    backend = "inductor" if cuda else "eager"  # Inductor on the CPU compiles for minutes
    amp = "bf16" if cuda else "none"
    u8, labels, idx = random_batch(batch, 256, 1000, device)
    torch.manual_seed(0)
    step = make_step(models.create("alexnet"), device, stats=random_stats(u8), amp=amp, channels_last=cuda,
                     compile=True, compile_backend=backend)
    t = time.perf_counter()
    loss, hits = step(u8, labels, idx, 0)
    first = time.perf_counter() - t
    step(u8, labels, idx, 1)
    if not bool(torch.isfinite(loss)):
        raise RuntimeError(f"the loss is {float(loss)}")
    dtype = AMP_DTYPES[amp]
    return (f"alexnet, batch {batch} of 3×224×224 from 256×256 uint8, {'bf16 autocast' if dtype else 'fp32'}, "
            f"compiled ({backend}): loss {float(loss):.3f}, first step {first:.1f} s (compilation included)")


def preflight(device: torch.device | None = None, log: Callable[[str], None] = print) -> bool:
    """Run every check, one line each (``ok``, ``WARN`` or ``FAIL``); True when none failed."""
    cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
    device = device or torch.device("cuda" if cuda else "cpu")
    ok = True
    env = environment(device)
    log(f"ok    versions: python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']}, "
        f"triton {env['triton']}, CUDA {env['cuda_version']}, cuDNN {env['cudnn']}, driver {env['driver']}")
    shm_ok, shm = _shm()
    log(("ok    " if shm_ok else "WARN  ") + shm)
    if cuda:
        log(f"ok    GPU: {env['cuda_device']} ({env['gpu_memory_gib']} GiB, {env['gpu_sms']} SMs)")
    else:
        log(f"WARN  no GPU: CUDA is not available; the checks below run on the CPU ({env['processor']})")
    # The compiled step at batch 256, the benchmark's: the graph is the one benchmarks/gpu.py's first
    # row compiles, so Inductor's on-disk cache serves that row the kernels compiled here.
    batch = (8, 256) if cuda else (2, 2)
    for name, check in (("LRN op", lambda: _lrn(device, batch[0])), ("compiled step", lambda: _compiled_step(device, batch[1]))):
        t = time.perf_counter()
        try:
            detail = check()
        except Exception as e:  # noqa: BLE001 - every check reports, whatever fails
            ok = False
            log(f"FAIL  {name}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            continue
        log(f"ok    {name}: {detail} ({time.perf_counter() - t:.1f} s)")
    return ok


__all__ = ["preflight"]
