"""Fast local response normalisation with the paper's formula (§3.3), and the dispatch between paths.

    s[i] = k + alpha * sum_{j=max(0, i-n//2)}^{min(C-1, i+n//2)} a[j]^2,    b[i] = a[i] * s[i] ** -beta

``alpha`` here is the *effective* alpha (§3.3's, not divided by n as torch and Caffe divide it).

Three implementations:

* ``lrn_plain``: pure PyTorch. The window sum is written as ``n`` shifted adds of a channel-padded
  ``a^2``, which Inductor fuses into one kernel (forward) under ``torch.compile``; eager autograd
  differentiates it. Half-precision inputs are computed in fp32: in bf16, ``k + alpha * sum`` with k = 2
  is rounded to steps of 1/64, which loses the term entirely unless the sum exceeds ~80 (α = 1e-4).
  It is the reference fallback.
* ``lrn_cpu``: for eager CPU training, the formula in as few memory passes as eager ops allow: the
  window sum as one ``addcmul`` per offset into ``k + alpha * sum`` (no ``a^2`` tensor, no zero fill),
  beta = 0.75 as ``rsqrt(s) * sqrt(rsqrt(s))`` instead of ``pow`` (exp and log per element), and the
  backward below written out the same way. Autograd's backward of ``lrn_plain`` recomputes the pow,
  and each of the n shifted views gets its own zero-filled full-size gradient: on a 2-core CPU LRN
  then cost as much as the rest of the CIFAR net's step. Not bit-identical to ``lrn_plain`` (the
  window's additions and the power round differently); within 1e-6 relative of the float64 formula
  per element in fp32 (tests).
* ``lrn_triton``: a Triton forward/backward kernel pair (NCHW and channels_last, fp32/bf16/fp16 with
  fp32 arithmetic), exposed as the custom op ``torch.ops.alexnet.lrn`` with a fake implementation and
  registered autograd, so ``torch.compile`` traces it without a graph break.

Backward, exact for the formula, with t[i] = g[i] * a[i] * s[i] ** (-beta - 1):

    dL/da[j] = g[j] * s[j] ** -beta - 2 * alpha * beta * a[j] * sum_{i in W(j)} t[i]

(the window is symmetric, so {i : j in W(i)} = W(j)). What the backward needs besides ``g`` is ``s`` at
the n channels around each j, i.e. ``a`` within 2*(n//2) channels. We save only the input ``a`` and
recompute ``s`` in the backward kernel rather than saving ``s``:

* memory: ``a`` is the output of the in-place ReLU before the LRN (§3.3: LRN follows the ReLU), which
  autograd keeps anyway for the ReLU's backward, so saving it costs nothing; saving ``s`` would add one
  activation-sized tensor per LRN layer (for the paper net at batch 256 in bf16: 244 MB).
* bandwidth: LRN is memory bound. Saving ``s`` costs a write in the forward and a read in the backward
  (forward read a/write b/write s, backward read g/a/s/write da: 7 tensor passes); recomputing costs
  5 passes. The recomputation's extra work is arithmetic on values already in L1/L2 (the shifted loads
  of neighbouring channels: 4·(n//2)+1 shifts of a and n of g, each loaded once after the compiler
  merges repeats, checked on the sm_90 PTX in tests) plus n pow()s per element (exp2/log2). For the
  paper net at batch 256 (122M LRN elements a step) that is ~1.5 G exp2/log2 against ~1.2 GB of bf16
  traffic per step, each ~0.4 ms on an H100 (~16 special-function ops/clock/SM; 3 TB/s), i.e. ~3% of a
  step at 20k img/s. Saving s would save the 5 extra pow()s but add 0.5 GB of traffic and the memory.

Dispatch (``local_response_norm``), chosen by ``ALEXNET_LRN`` = ``auto`` (default) | ``plain`` | ``triton``,
read when this module is first imported, or by ``set_mode``:

* ``auto``: Triton for 4-D CUDA tensors in fp32/bf16/fp16 when Triton imports; ``lrn_cpu`` for fp32/fp64
  CPU tensors outside ``torch.compile``; the plain path otherwise.
* ``plain``: always the plain path (e.g. to let Inductor fuse the LRN with its neighbours under compile).
* ``triton``: the Triton kernels; CPU tensors only with ``TRITON_INTERPRET=1`` set before import (the
  interpreter, for tests). Raises ``UserError`` where the kernels cannot run, rather than silently
  measuring the other path.

The mode is a module global, so ``torch.compile`` guards on it and recompiles when ``set_mode`` changes it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.nn.functional as F

from alexnet.errors import UserError

try:  # Triton ships with the CUDA wheels of torch; absent or broken, the plain path serves.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # noqa: BLE001 - any import failure means "no Triton"
    HAVE_TRITON = False

MODES = ("auto", "plain", "triton")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CPU_DTYPES = (torch.float32, torch.float64)  # what lrn_cpu's hand-written backward runs on
# Set before triton was imported, this makes @triton.jit build interpreted kernels that run on CPU tensors.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _parse_mode(value: str, source: str) -> str:
    mode = value.strip().lower()
    if mode not in MODES:
        raise UserError(f"{source}={value!r}: expected one of {', '.join(MODES)}")
    return mode


_MODE: str = _parse_mode(os.environ.get("ALEXNET_LRN", "auto"), "ALEXNET_LRN")


def mode() -> str:
    """The current dispatch mode: "auto", "plain" or "triton"."""
    return _MODE


def set_mode(new_mode: str) -> None:
    """Override ``ALEXNET_LRN`` for this process."""
    global _MODE
    _MODE = _parse_mode(new_mode, "lrn mode")


@contextlib.contextmanager
def use_mode(new_mode: str) -> Iterator[None]:
    """``with use_mode("plain"): ...`` — the dispatch mode for a block (benchmarks, tests)."""
    old = _MODE
    set_mode(new_mode)
    try:
        yield
    finally:
        set_mode(old)


# ---------------------------------------------------------------------------------------------------
# Plain PyTorch path


def lrn_plain(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """§3.3 as tensor ops: zero-pad a^2 by n//2 channels each side, add the n shifted views.

    Works for any ``x`` of shape N×C×(spatial...), any memory format (the adds keep the input's
    layout), any device; autograd and ``torch.compile`` see plain ops.
    """
    half = size // 2
    n_ch = x.shape[1]
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # fp32 for the small alpha term
    sq = xf * xf
    # F.pad lists the last dim first: (0, 0) per spatial dim, then (half, half) for the channel dim.
    padded = F.pad(sq, (0, 0) * (x.dim() - 2) + (half, half))  # N×(C+2·half)×...
    win = padded.narrow(1, 0, n_ch)
    for d in range(1, size):
        win = win + padded.narrow(1, d, n_ch)  # channel j+d-half of the original, zero outside 0..C-1
    out = xf * (k + alpha * win).pow(-beta)
    return out.to(x.dtype)


def _scaled_window(x: torch.Tensor, size: int, alpha: float, k: float) -> torch.Tensor:
    """``k + alpha * sum of x[:, j]^2`` over the channels j within size//2 of each channel (zero outside
    0..C-1): one ``addcmul`` per offset into a single output, so neither ``x^2`` nor a zero-filled sum
    is written. In ``x``'s memory format."""
    half, c = size // 2, x.shape[1]
    s = torch.addcmul(torch.tensor(k, dtype=x.dtype), x, x, value=alpha)  # the centre channel, + k
    for off in range(-half, half + 1):
        lo, hi = max(0, -off), min(c, c - off)  # channels i whose neighbour i + off exists
        if off and hi > lo:
            xs = x.narrow(1, lo + off, hi - lo)
            s.narrow(1, lo, hi - lo).addcmul_(xs, xs, value=alpha)
    return s


def _neg_pow(s: torch.Tensor, beta: float) -> torch.Tensor:
    """``s ** -beta``. §3.3's beta = 0.75 as ``rsqrt(s) * sqrt(rsqrt(s))`` (s^-1/2 · s^-1/4): three
    cheap vectorised passes instead of pow's exp/log per element, within a few ulp of the formula
    (s ≥ k > 0; tests/test_lrn_fast.py bounds it against float64); beta = 0.5 as rsqrt alone."""
    if beta == 0.75:
        r = s.rsqrt()
        return r.sqrt().mul_(r)
    if beta == 0.5:
        return s.rsqrt()
    return s.pow(-beta)


class _LRNCpu(torch.autograd.Function):
    """§3.3's LRN with the backward of the module docstring, for eager CPU tensors."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:  # type: ignore[override]
        s = _scaled_window(x, size, alpha, k)
        scale = _neg_pow(s, beta)
        ctx.save_for_backward(x, s, scale)
        ctx.consts = (size, alpha, beta)
        return x * scale

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, s, scale = ctx.saved_tensors
        size, alpha, beta = ctx.consts
        grad = g * scale  # g[j] * s[j] ** -beta
        t = torch.mul(grad, x).div_(s)  # t[i] = g[i] * a[i] * s[i] ** (-beta - 1)
        # grad[j] -= 2 alpha beta a[j] sum_{i in W(j)} t[i]: one addcmul per offset, no window tensor.
        half, c, value = size // 2, x.shape[1], -2.0 * alpha * beta
        for off in range(-half, half + 1):
            lo, hi = max(0, -off), min(c, c - off)
            if hi > lo:
                grad.narrow(1, lo, hi - lo).addcmul_(x.narrow(1, lo, hi - lo), t.narrow(1, lo + off, hi - lo), value=value)
        return grad, None, None, None, None


def lrn_cpu(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """§3.3's LRN for ``CPU_DTYPES`` with a hand-written backward and beta = 0.75 through rsqrt (within
    a few ulp of the formula, not bit-identical to ``lrn_plain``); other dtypes (half precision) go to
    ``lrn_plain``, which computes in fp32."""
    if x.dtype not in CPU_DTYPES:
        return lrn_plain(x, size, alpha, beta, k)
    return _LRNCpu.apply(x, int(size), float(alpha), float(beta), float(k))


def cpu_applies(x: torch.Tensor) -> bool:
    """Whether ``auto`` sends ``x`` to ``lrn_cpu``: eager CPU tensors (under ``torch.compile`` the plain
    ops let Inductor fuse the LRN); ``lrn_cpu`` itself sends dtypes outside ``CPU_DTYPES`` on."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


# ---------------------------------------------------------------------------------------------------
# Triton kernels
#
# Both kernels see the tensor as (N, C, P) with strides (stride_n, stride_c, stride_p): for NCHW that is
# (C·H·W, H·W, 1) with P = H·W; for channels_last the pixels of all images form one run of stride C, so
# it is (N=1, C, P=N·H·W) with strides (0, 1, C). Triton specialises integer arguments equal to 1, so the
# unit stride is known at compile time and the loads are laid out along the contiguous axis.
# A program normalises a BLOCK_P × BLOCK_C tile; the window's neighbouring channels are read with
# shifted, masked loads (zero outside 0..C-1, i.e. the formula's clipped window), which hit L1/L2.

if HAVE_TRITON:

    @triton.jit
    def _shift_ok(p_ok, c, C, SHIFT: tl.constexpr):
        cs = c + SHIFT
        return p_ok & ((cs >= 0) & (cs < C))[None, :]

    @triton.jit
    def _load_shifted(ptr, p_off, p_ok, c, C, stride_c, SHIFT: tl.constexpr):
        """The tile's values at channel c + SHIFT as fp32, zero outside 0..C-1 (the clipped window)."""
        m = _shift_ok(p_ok, c, C, SHIFT)
        return tl.load(ptr + p_off + (c + SHIFT)[None, :] * stride_c, mask=m, other=0.0).to(tl.float32)

    @triton.jit
    def _tile(P, stride_n, stride_p, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, INT64: tl.constexpr):
        """This program's tile: the pixels' offsets (BLOCK_P×1, image base included), their mask
        (BLOCK_P×1) and the tile's channel indices (BLOCK_C)."""
        pid_p = tl.program_id(0)
        pid_c = tl.program_id(1)
        pid_n = tl.program_id(2)
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        if INT64:
            p = p.to(tl.int64)
            c = c.to(tl.int64)
        p_off = pid_n.to(tl.int64) * stride_n + p[:, None] * stride_p
        return p_off, (p < P)[:, None], c

    @triton.jit
    def _lrn_fwd_kernel(
        x_ptr,
        y_ptr,
        C,
        P,
        stride_n,
        stride_c,
        stride_p,
        alpha,
        beta,
        k,
        HALF: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
        INT64: tl.constexpr,
    ):
        p_off, p_ok, c = _tile(P, stride_n, stride_p, BLOCK_P, BLOCK_C, INT64)
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        a = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for d in tl.static_range(2 * HALF + 1):
            v = _load_shifted(x_ptr, p_off, p_ok, c, C, stride_c, d - HALF)
            acc += v * v
            if d == HALF:
                a = v
        s = k + alpha * acc
        y = a * tl.exp2(-beta * tl.log2(s))  # s ** -beta; s >= k > 0
        m0 = p_ok & (c < C)[None, :]
        tl.store(y_ptr + p_off + c[None, :] * stride_c, y.to(y_ptr.dtype.element_ty), mask=m0)

    @triton.jit
    def _lrn_bwd_kernel(
        x_ptr,
        g_ptr,
        dx_ptr,
        C,
        P,
        stride_n,
        stride_c,
        stride_p,
        alpha,
        beta,
        k,
        HALF: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
        INT64: tl.constexpr,
    ):
        # x, g and dx share one layout (the wrapper makes g match x).
        p_off, p_ok, c = _tile(P, stride_n, stride_p, BLOCK_P, BLOCK_C, INT64)
        t_sum = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)  # sum_{i in W(j)} g_i a_i s_i^(-beta-1)
        own = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)  # g_j s_j^(-beta)
        a_j = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for d in tl.static_range(2 * HALF + 1):  # neighbour i = j + d - HALF
            g_i = _load_shifted(g_ptr, p_off, p_ok, c, C, stride_c, d - HALF)
            a_i = _load_shifted(x_ptr, p_off, p_ok, c, C, stride_c, d - HALF)
            # s_i from a within i's window; the same shift loaded for different (d, e) is one load
            # after the compiler's common-subexpression elimination (4·HALF+1 distinct shifts of a).
            acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
            for e in tl.static_range(2 * HALF + 1):
                v = _load_shifted(x_ptr, p_off, p_ok, c, C, stride_c, d + e - 2 * HALF)
                acc += v * v
            s_i = k + alpha * acc
            r_i = tl.exp2((-beta - 1.0) * tl.log2(s_i))  # s_i ** (-beta - 1)
            # g_i = a_i = 0 outside 0..C-1; the where also keeps 0 * inf out when k = 0.
            t_sum += tl.where(_shift_ok(p_ok, c, C, d - HALF), g_i * a_i * r_i, 0.0)
            if d == HALF:
                own = g_i * (s_i * r_i)
                a_j = a_i
        dx = own - (2.0 * alpha * beta) * a_j * t_sum
        m0 = p_ok & (c < C)[None, :]
        tl.store(dx_ptr + p_off + c[None, :] * stride_c, dx.to(dx_ptr.dtype.element_ty), mask=m0)


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _layout(x: torch.Tensor) -> tuple[int, int, int, int, int, int] | None:
    """(N, C, P, stride_n, stride_c, stride_p) of the kernels' view of a 4-D tensor, or None if the
    tensor is neither NCHW- nor channels_last-contiguous."""
    n, c, h, w = x.shape
    if x.is_contiguous():
        return n, c, h * w, c * h * w, h * w, 1
    if x.is_contiguous(memory_format=torch.channels_last):
        return 1, c, n * h * w, 0, 1, c  # NHWC: every pixel of every image is a run of C channels
    return None


def kernel_blocks(c: int, p: int, channels_last: bool, backward: bool) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C) for a tile. Heuristic until swept on a GPU (benchmarks/lrn.py --sweep).

    channels_last: the channel axis is contiguous, so a tile spans a run of channels of BLOCK_P
    pixels; BLOCK_C is the largest power of two ≤ 64 dividing C where that is ≥ 16 (96 → 32,
    256 → 64: no masked lanes), else C rounded up. NCHW: pixels are contiguous, so the tile is long
    in P and 16 channels deep. The backward keeps ~10 tiles live, so its tiles are half the size.
    """
    elems = 1024 if backward else 2048
    if channels_last:
        pow2_div = c & -c
        block_c = min(64, pow2_div) if pow2_div >= 16 else min(64, _next_pow2(c))
        block_p = max(1, elems // block_c)
    else:
        block_c = min(16, _next_pow2(c))
        block_p = max(16, min(_next_pow2(p), elems // block_c))
    return block_p, block_c


_NUM_WARPS = 4


def _launch(
    kernel: object,
    tensors: tuple[torch.Tensor, ...],
    x: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    backward: bool,
    blocks: tuple[int, int] | None,
) -> None:
    lay = _layout(x)
    assert lay is not None
    n, c, p, s_n, s_c, s_p = lay
    # NCHW always has stride_p = 1; channels_last has stride_p = C > 1 (C = 1 is also NCHW-contiguous).
    block_p, block_c = blocks or kernel_blocks(c, p, s_p != 1, backward)
    grid = (triton.cdiv(p, block_p), triton.cdiv(c, block_c), n)
    int64 = x.numel() >= 2**31 - 1
    kernel[grid](  # type: ignore[index]
        *tensors, c, p, s_n, s_c, s_p, float(alpha), float(beta), float(k),
        HALF=size // 2, BLOCK_P=block_p, BLOCK_C=block_c, INT64=int64, num_warps=_NUM_WARPS,
    )


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself if the kernels can index it, else an NCHW copy."""
    return x if _layout(x) is not None else x.contiguous()


def triton_forward(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, blocks: tuple[int, int] | None = None
) -> torch.Tensor:
    """Run the forward kernel directly (no autograd). Output has ``empty_like(x)``'s layout."""
    out = torch.empty_like(x)
    xd = _dense(x)
    y = out if xd is x else torch.empty_like(xd)
    _launch(_lrn_fwd_kernel, (xd, y), xd, size, alpha, beta, k, False, blocks)
    if y is not out:
        out.copy_(y)
    return out


def triton_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    blocks: tuple[int, int] | None = None,
) -> torch.Tensor:
    """dL/dx from dL/dy (``grad``) and the saved input, by the backward kernel."""
    out = torch.empty_like(x)
    xd = _dense(x)
    # The kernel indexes g with x's strides: bring g to x's layout (a copy only if they differ).
    g = grad if grad.stride() == xd.stride() else torch.empty_like(xd).copy_(grad)
    dx = out if xd is x else torch.empty_like(xd)
    _launch(_lrn_bwd_kernel, (xd, g, dx), xd, size, alpha, beta, k, True, blocks)
    if dx is not out:
        out.copy_(dx)
    return out


# Custom ops: opaque to torch.compile (no graph break), with fake implementations for tracing and the
# backward registered as autograd. Registered on every device so the interpreter can run them on CPU.


@torch.library.custom_op("alexnet::lrn", mutates_args=())
def _lrn_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return triton_forward(x, size, alpha, beta, k)


@_lrn_op.register_fake
def _(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("alexnet::lrn_backward", mutates_args=())
def _lrn_backward_op(grad: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return triton_backward(grad, x, size, alpha, beta, k)


@_lrn_backward_op.register_fake
def _(grad: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return torch.empty_like(x)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: torch.Tensor) -> None:
    x, size, alpha, beta, k = inputs
    ctx.save_for_backward(x)  # only the input: s is recomputed (see the module docstring)
    ctx.params = (size, alpha, beta, k)  # type: ignore[attr-defined]


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:
    (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
    size, alpha, beta, k = ctx.params  # type: ignore[attr-defined]
    return _lrn_backward_op(grad, x, size, alpha, beta, k), None, None, None, None


_lrn_op.register_autograd(_backward, setup_context=_setup_context)


def lrn_triton(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """The Triton path with autograd (``torch.ops.alexnet.lrn``): 4-D fp32/bf16/fp16 input."""
    if not HAVE_TRITON:
        raise UserError("ALEXNET_LRN=triton: triton is not importable in this environment")
    if x.dim() != 4 or x.dtype not in _KERNEL_DTYPES:
        raise UserError(
            f"ALEXNET_LRN=triton: kernels take 4-D float32/bfloat16/float16 input, got {x.dim()}-D {x.dtype}"
        )
    if not (x.is_cuda or INTERPRET):
        raise UserError(f"ALEXNET_LRN=triton: tensor on {x.device}; the kernels need CUDA (or TRITON_INTERPRET=1)")
    return _lrn_op(x, int(size), float(alpha), float(beta), float(k))


def triton_applies(x: torch.Tensor) -> bool:
    """Whether ``auto`` sends ``x`` to the Triton kernels."""
    return HAVE_TRITON and x.is_cuda and x.dim() == 4 and x.dtype in _KERNEL_DTYPES


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """§3.3's LRN of ``x`` (N×C×...), alpha already effective; the path is chosen by ``mode()``."""
    if _MODE == "triton":
        return lrn_triton(x, size, alpha, beta, k)
    if _MODE == "auto" and triton_applies(x):
        return _lrn_op(x, int(size), float(alpha), float(beta), float(k))
    if _MODE == "auto" and cpu_applies(x):
        return lrn_cpu(x, size, alpha, beta, k)
    return lrn_plain(x, size, alpha, beta, k)
