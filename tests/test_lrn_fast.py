"""The fast LRN paths (plain, Triton) against §3.3's formula as written in ``lrn_reference``.

The Triton kernels are checked on CPU by Triton's interpreter, in a subprocess because
``TRITON_INTERPRET=1`` must be set before triton is imported.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from alexnet.errors import UserError
from alexnet.models import lrn_fast
from alexnet.models.layers import LocalResponseNorm, lrn_reference

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
PAPER = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)


def _input(shape: tuple[int, ...], fmt: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    # Scaled so that alpha * sum(a^2) is comparable to k and the normalisation is not a near-constant.
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 30.0
    return x.to(dtype).contiguous(memory_format=FORMATS[fmt])


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _ref_and_grad(x: torch.Tensor, g: torch.Tensor, size: int, alpha: float, beta: float, k: float):
    """The reference formula in float64, with its gradient for the upstream gradient ``g``."""
    xd = x.detach().double().requires_grad_()
    y = lrn_reference(xd, size, alpha, beta, k)
    (dx,) = torch.autograd.grad(y, xd, g.double())
    return y.detach(), dx


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("size", [3, 5, 7])
@pytest.mark.parametrize("channels", [4, 13, 40])
def test_plain_matches_reference_fp32(fmt: str, size: int, channels: int) -> None:
    x = _input((2, channels, 3, 5), fmt).requires_grad_()
    g = _input((2, channels, 3, 5), fmt, seed=1) / 30.0
    y = lrn_fast.lrn_plain(x, size, 1e-4, 0.75, 2.0)
    (dx,) = torch.autograd.grad(y, x, g)
    y_ref, dx_ref = _ref_and_grad(x, g, size, 1e-4, 0.75, 2.0)
    assert y.dtype == torch.float32
    assert _rel_err(y, y_ref) <= 1e-5
    assert _rel_err(dx, dx_ref) <= 1e-5
    # The plain path keeps the input's memory format (channels_last stays channels_last).
    assert y.is_contiguous(memory_format=FORMATS[fmt])


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("size", [3, 5, 7])
def test_plain_gradcheck_float64(fmt: str, size: int) -> None:
    x = (_input((1, 9, 2, 3), fmt, torch.float64) / 10.0).requires_grad_()
    # A large alpha makes the window term matter as much as k in the Jacobian.
    assert torch.autograd.gradcheck(lambda t: lrn_fast.lrn_plain(t, size, 1e-2, 0.75, 2.0), (x,))


# lrn_cpu's stated fp32 tolerance against the float64 formula: each output within 1e-6 of its value
# (about 8 ulp: the window's additions, rsqrt, sqrt and two products each round once or twice).
CPU_REL_TOL = 1e-6


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("size", [3, 5, 7])
@pytest.mark.parametrize("channels", [2, 13, 40])
@pytest.mark.parametrize("beta", [0.75, 0.5, 0.6])
def test_cpu_path_within_its_tolerance_of_the_float64_formula(fmt: str, size: int, channels: int, beta: float) -> None:
    """lrn_cpu (beta 0.75 through rsqrt · sqrt(rsqrt), 0.5 through rsqrt, others through pow): every
    output element within CPU_REL_TOL of the float64 formula (fewer channels than the window too),
    the reference gradient, and the input's memory format."""
    x = _input((2, channels, 3, 5), fmt).requires_grad_()
    g = _input((2, channels, 3, 5), fmt, seed=1) / 30.0
    y = lrn_fast.lrn_cpu(x, size, 1e-4, beta, 2.0)
    (dx,) = torch.autograd.grad(y, x, g)
    y_ref, dx_ref = _ref_and_grad(x, g, size, 1e-4, beta, 2.0)
    assert y.dtype == torch.float32
    assert ((y.double() - y_ref).abs() <= CPU_REL_TOL * y_ref.abs()).all()
    assert _rel_err(dx, dx_ref) <= 1e-5
    assert y.is_contiguous(memory_format=FORMATS[fmt])


def test_cpu_path_rsqrt_power_over_the_range_of_s() -> None:
    """beta = 0.75 through rsqrt: s ** -0.75 within CPU_REL_TOL of float64 for s from k = 2 (no
    activity) to 1e6 (a window sum of 1e10 at alpha 1e-4), where pow itself rounds once."""
    s = torch.logspace(math.log10(2.0), 6.0, 100_003, dtype=torch.float64)
    approx = lrn_fast._neg_pow(s.float(), 0.75).double()
    exact = s.float().double() ** -0.75  # the formula at the fp32 input
    assert ((approx - exact).abs() <= CPU_REL_TOL * exact).all()


@pytest.mark.parametrize("size", [3, 5])
def test_cpu_path_gradcheck_float64(size: int) -> None:
    x = (_input((1, 9, 2, 3), "nchw", torch.float64) / 10.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: lrn_fast.lrn_cpu(t, size, 1e-2, 0.75, 2.0), (x,))
    assert torch.autograd.gradcheck(lambda t: lrn_fast.lrn_cpu(t, size, 1e-2, 0.5, 1.0), (x,))


def test_auto_mode_trains_cpu_tensors_on_the_cpu_path() -> None:
    x = _input((2, 13, 3, 3), "nchw").requires_grad_()
    with lrn_fast.use_mode("auto"):
        assert type(lrn_fast.local_response_norm(x, 5, 1e-4, 0.75, 2.0).grad_fn).__name__ == "_LRNCpuBackward"
        # float16 on CPU (no hand-written path for it) and an explicit "plain" keep the plain ops.
        assert "LRNCpu" not in type(lrn_fast.local_response_norm(x.half(), 5, 1e-4, 0.75, 2.0).grad_fn).__name__
    with lrn_fast.use_mode("plain"):
        assert "LRNCpu" not in type(lrn_fast.local_response_norm(x, 5, 1e-4, 0.75, 2.0).grad_fn).__name__


def test_plain_bf16_within_rounding() -> None:
    x = _input((2, 13, 4, 4), "channels_last", torch.bfloat16)
    y = lrn_fast.lrn_plain(x, **PAPER)
    y_ref = lrn_reference(x.double(), **PAPER)
    assert y.dtype == torch.bfloat16
    # Computed in fp32, rounded once: within half a bf16 ulp (2^-9 relative), so surely within 2^-8.
    torch.testing.assert_close(y.double(), y_ref, rtol=2**-8, atol=1e-30)


def test_torch_lrn_with_alpha_times_n_is_the_paper_layer() -> None:
    """The α/n trap: torch divides alpha by n, so the paper's layer is torch's with alpha = 5e-4."""
    x = _input((2, 96, 5, 5), "nchw").clamp_min(0)  # LRN follows a ReLU (§3.3)
    ours = LocalResponseNorm()(x)
    theirs = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(x)
    assert _rel_err(theirs, ours) <= 1e-5
    # With the paper's alpha passed straight to torch, the normalisation is 5× weaker: measurably different.
    naive = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(x)
    assert _rel_err(naive, ours) > 1e-2
    # ... which is what the authors' released config meant (divide_alpha_by_n=True).
    released = LocalResponseNorm(divide_alpha_by_n=True)(x)
    assert _rel_err(naive, released) <= 1e-5


def test_mode_switch_and_errors() -> None:
    x = _input((2, 13, 3, 3), "nchw")
    with lrn_fast.use_mode("plain"):
        assert lrn_fast.mode() == "plain"
        assert torch.equal(lrn_fast.local_response_norm(x, 5, 1e-4, 0.75, 2.0), lrn_fast.lrn_plain(x, 5, 1e-4, 0.75, 2.0))
    with pytest.raises(UserError, match="expected one of auto, plain, triton"):
        lrn_fast.set_mode("cudnn")
    # auto never sends a CPU tensor to the kernels.
    with lrn_fast.use_mode("auto"):
        assert not lrn_fast.triton_applies(x)
        y = lrn_fast.local_response_norm(x.requires_grad_(), 5, 1e-4, 0.75, 2.0)
        assert "alexnet_lrn" not in type(y.grad_fn).__name__
    if not lrn_fast.INTERPRET:
        # An explicit request for the kernels fails loudly where they cannot run.
        with lrn_fast.use_mode("triton"), pytest.raises(UserError, match="ALEXNET_LRN=triton"):
            lrn_fast.local_response_norm(x, 5, 1e-4, 0.75, 2.0)


def test_bad_env_var_is_a_user_error() -> None:
    code = "import alexnet.models.lrn_fast"
    env = {**os.environ, "ALEXNET_LRN": "fastest"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "UserError: ALEXNET_LRN='fastest': expected one of auto, plain, triton" in proc.stderr


def test_plain_compiles_without_graph_break() -> None:
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward without codegen."""
    layer = LocalResponseNorm()
    x = _input((2, 13, 3, 3), "channels_last").requires_grad_()
    with lrn_fast.use_mode("plain"):
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        y = compiled(x)
        (dx,) = torch.autograd.grad(y.sum(), x)
        y_e = layer(x)
        (dx_e,) = torch.autograd.grad(y_e.sum(), x)
    assert _rel_err(y, y_e) <= 1e-6 and _rel_err(dx, dx_e) <= 1e-6


# ---------------------------------------------------------------------------------------------------
# Triton kernels under the interpreter

_INTERPRETER_SCRIPT = textwrap.dedent(
    r"""
    import json, torch
    from alexnet.models import lrn_fast
    from alexnet.models.layers import lrn_reference
    assert lrn_fast.HAVE_TRITON and lrn_fast.INTERPRET and lrn_fast.mode() == "triton"
    FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    out = []

    def case(name, shape, fmt, dtype, size, alpha=1e-4, beta=0.75, k=2.0, blocks=None, g_fmt=None, seed=0):
        gen = torch.Generator().manual_seed(seed)
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 30).to(dtype)
        g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        x = x.contiguous(memory_format=FORMATS[fmt])
        g = g.contiguous(memory_format=FORMATS[g_fmt or "nchw"])
        xd = x.double().requires_grad_()
        y_ref = lrn_reference(xd, size, alpha, beta, k)
        (dx_ref,) = torch.autograd.grad(y_ref, xd, g.double())
        if blocks is None:  # through the dispatcher: custom op + registered autograd
            xt = x.clone().requires_grad_()
            y = lrn_fast.local_response_norm(xt, size, alpha, beta, k)
            (dx,) = torch.autograd.grad(y, xt, g)
            via = type(y.grad_fn).__name__
        else:  # the kernels directly, with forced tile sizes
            y = lrn_fast.triton_forward(x, size, alpha, beta, k, blocks=blocks)
            dx = lrn_fast.triton_backward(g, x, size, alpha, beta, k, blocks=blocks)
            via = "direct"
        def errs(a, r):
            d = (a.double() - r.detach()).abs()
            scale = r.detach().abs()
            return {"rel_max": (d.max() / scale.max()).item(),
                    # elementwise: the worst |error| in units of |reference|, ignoring 1e-6·max cancellations
                    "elem": (d / (scale + 1e-6 * scale.max())).max().item()}
        out.append({"name": name, "dtype": str(dtype), "fmt": fmt, "size": size, "via": via,
                    "y": errs(y, y_ref), "dx": errs(dx, dx_ref), "y_dtype": str(y.dtype),
                    "y_layout_kept": y.is_contiguous(memory_format=FORMATS[fmt])})

    # The interpreter runs each program in Python, so the shapes are small and the grids short.
    for fmt in FORMATS:
        for size in (3, 5, 7):
            case("default-blocks", (2, 40, 2, 3), fmt, torch.float32, size)
        # Tiles smaller than C and P, C and P not multiples of them: halos cross tile edges.
        case("small-blocks", (2, 13, 2, 5), fmt, torch.float32, 5, blocks=(8, 8))
        case("small-blocks-7", (1, 21, 2, 3), fmt, torch.float32, 7, blocks=(4, 8))
        case("bf16", (2, 40, 2, 3), fmt, torch.bfloat16, 5)
        case("fp16", (1, 13, 3, 4), fmt, torch.float16, 5, alpha=1e-3)
        case("grad-other-layout", (1, 13, 3, 4), fmt, torch.float32, 5, g_fmt="channels_last" if fmt == "nchw" else "nchw")
        case("k0", (1, 9, 2, 2), fmt, torch.float32, 3, alpha=1.0, beta=0.5, k=0.0)
    case("paper-shape-cl", (1, 96, 3, 3), "channels_last", torch.float32, 5)
    case("paper-shape-cl-bf16", (1, 256, 2, 2), "channels_last", torch.bfloat16, 5)

    # Compile: the custom op traces with its fake implementation, no graph break, same numbers.
    x = (torch.randn(2, 13, 3, 3, dtype=torch.float64) * 30).float().contiguous(memory_format=torch.channels_last).requires_grad_()
    f = torch.compile(lambda t: lrn_fast.local_response_norm(t, 5, 1e-4, 0.75, 2.0), backend="aot_eager", fullgraph=True)
    yc = f(x); (dxc,) = torch.autograd.grad(yc.sum(), x)
    ye = lrn_fast.local_response_norm(x, 5, 1e-4, 0.75, 2.0); (dxe,) = torch.autograd.grad(ye.sum(), x)
    compiled_equal = bool(torch.equal(yc, ye) and torch.equal(dxc, dxe))
    # torch.library's own checks of the op's schema, fake kernel and autograd registration.
    for fmt in FORMATS:
        xo = torch.randn(2, 7, 3, 3).contiguous(memory_format=FORMATS[fmt]).requires_grad_()
        torch.library.opcheck(torch.ops.alexnet.lrn.default, (xo, 5, 1e-4, 0.75, 2.0))
    print("RESULT " + json.dumps({"cases": out, "compiled_equal": compiled_equal}))
    """
)


@pytest.fixture(scope="module")
def interpreted() -> dict:
    if not lrn_fast.HAVE_TRITON:
        pytest.skip("triton is not installed in this environment (it ships with torch's CUDA wheels)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "ALEXNET_LRN": "triton"}
    proc = subprocess.run(
        [sys.executable, "-c", _INTERPRETER_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def test_triton_fp32_exact(interpreted: dict) -> None:
    cases = [c for c in interpreted["cases"] if c["dtype"] == "torch.float32"]
    assert len(cases) == 15
    for c in cases:
        assert c["y"]["rel_max"] <= 1e-5, c
        assert c["dx"]["rel_max"] <= 1e-5, c
        assert c["y_layout_kept"], c
    # The dispatcher really went through the custom op's autograd, not the plain path.
    assert any("alexnet_lrn" in c["via"] for c in cases)
    assert all("alexnet_lrn" in c["via"] for c in cases if c["name"] == "default-blocks")


def test_triton_half_precision_within_rounding(interpreted: dict) -> None:
    # One rounding of an fp32 result. fp16: to nearest, within the unit roundoff 2^-11. bf16: within one
    # ulp (2^-7 relative at worst), because Triton's interpreter converts fp32 -> bf16 by truncation
    # (triton 3.8 runtime/interpreter.py cast_impl), where the GPU's cvt.rn rounds to nearest (2^-8).
    ulp = {"torch.bfloat16": 2.0**-7, "torch.float16": 2.0**-11}
    cases = [c for c in interpreted["cases"] if c["dtype"] in ulp]
    assert len(cases) == 5
    for c in cases:
        assert c["y_dtype"] == c["dtype"], c
        assert c["y"]["elem"] <= ulp[c["dtype"]], c
        assert c["dx"]["elem"] <= ulp[c["dtype"]], c


def test_triton_op_compiles_and_passes_opcheck(interpreted: dict) -> None:
    assert interpreted["compiled_equal"]


# ---------------------------------------------------------------------------------------------------
# The kernels compiled for the H100 (sm_90) without a GPU: Triton bundles ptxas.


@pytest.mark.parametrize(
    ("kernel", "dtype", "channels_last", "channels"),
    [("fwd", "bf16", True, 96), ("bwd", "bf16", True, 256), ("bwd", "fp32", False, 96)],
)
def test_kernels_compile_for_sm90(kernel: str, dtype: str, channels_last: bool, channels: int) -> None:
    if not lrn_fast.HAVE_TRITON:
        pytest.skip("triton is not installed in this environment")
    if lrn_fast.INTERPRET:
        pytest.skip("TRITON_INTERPRET is set: jit functions are interpreted, not compiled")
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        pytest.skip(f"this triton has no ahead-of-time compile API: {e}")
    fn = lrn_fast._lrn_fwd_kernel if kernel == "fwd" else lrn_fast._lrn_bwd_kernel
    n_ptr = 2 if kernel == "fwd" else 3
    names = fn.arg_names
    half = 2  # the paper's n = 5
    p = 256 * 27 * 27 if channels_last else 27 * 27
    block_p, block_c = lrn_fast.kernel_blocks(channels, p, channels_last, kernel == "bwd")
    sig = {n: "*" + dtype for n in names[:n_ptr]}
    sig.update({n: "i32" for n in ("C", "P", "stride_n", "stride_c", "stride_p")})
    sig.update({n: "fp32" for n in ("alpha", "beta", "k")})
    unit = "stride_c" if channels_last else "stride_p"  # what the launcher's specialisation makes constexpr 1
    consts = {"HALF": half, "BLOCK_P": block_p, "BLOCK_C": block_c, "INT64": False, unit: 1}
    sig.update({n: "constexpr" for n in consts})
    aligned = [["tt.divisibility", 16]]
    attrs = {(i,): aligned for i in range(n_ptr)}
    attrs[(names.index("C"),)] = aligned
    compiled = triton.compile(
        ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32), options={"num_warps": lrn_fast._NUM_WARPS}
    )
    ptx = compiled.asm["ptx"]
    assert ".local" not in ptx, "register spills to local memory"
    # Each distinct channel shift is loaded once per element held by a thread: the forward reads
    # 2·HALF+1 shifts of x; the backward 2·HALF+1 of g and 4·HALF+1 of x (its repeated loads merged).
    per_thread = block_p * block_c // (32 * lrn_fast._NUM_WARPS)
    shifts = 2 * half + 1 if kernel == "fwd" else (2 * half + 1) + (4 * half + 1)
    assert ptx.count("ld.global") == shifts * per_thread
