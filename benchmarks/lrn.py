"""Time the LRN implementations on the paper net's LRN shapes, and LRN's share of a training step.

    python benchmarks/lrn.py                     # CUDA if available: batch 256, fp32 + bf16, both layouts
    python benchmarks/lrn.py --device cpu --tiny # smoke run, well under a minute on 2 cores

LRN rows: forward + backward of one layer on N×96×55×55 (after conv1) and N×256×27×27 (after conv2)
(§3.3, Figure 2), for
  plain          alexnet.models.lrn_fast.lrn_plain (pure PyTorch, eager)
  cpu            alexnet.models.lrn_fast.lrn_cpu (fewer passes, rsqrt power, hand-written backward; CPU default)
  plain+compile  the same under torch.compile (Inductor fuses the shifted adds; CUDA default, --compile)
  torch          torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2) == the paper's formula (α/n trap)
  triton         the Triton kernel pair (CUDA only)
Step rows: one training step (alexnet.engine.fast_step.FastStep, the step ``alexnet train`` runs, with
the paper's update) of alexnet.models.create("alexnet") with lrn="none" and with each LRN path, on
random input already cropped; ``lrn_share`` = 1 - t(none) / t(path) (``alexnet.perf.steps.lrn_share``) is
the fraction of the step spent in LRN (target ≤ 15%, benchmarks/README.md).
Writes benchmarks/results/lrn-<device>-<date>.json with the device, versions, date and git SHA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from alexnet import models
from alexnet.engine.device import AMP_DTYPES
from alexnet.environment import environment
from alexnet.models import lrn_fast
from alexnet.models.layers import PAPER_LRN, LocalResponseNorm
from alexnet.perf.results import device_name, device_slug, results_path, write_results
from alexnet.perf.steps import lrn_share, make_step
from alexnet.perf.timing import time_calls

ROOT = Path(__file__).resolve().parent
# The paper net's two LRN layers (Figure 2): after conv1+ReLU and after conv2+ReLU.
LRN_SHAPES = ((96, 55, 55), (256, 27, 27))
DTYPES = {"fp32": torch.float32, **{k: v for k, v in AMP_DTYPES.items() if v is not None}}
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
SIZE, ALPHA, BETA, K = PAPER_LRN["size"], PAPER_LRN["alpha"], PAPER_LRN["beta"], PAPER_LRN["k"]


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, iters: int, repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean time per call of ``iters`` back-to-back calls, in ms."""
    return statistics.median(time_calls(fn, device, iters=iters, repeats=repeats, warmup=warmup)) * 1e3


def lrn_impls(device: torch.device, compile_plain: bool) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    def plain(x: torch.Tensor) -> torch.Tensor:
        return lrn_fast.lrn_plain(x, SIZE, ALPHA, BETA, K)

    # torch divides alpha by n (§3.3 does not): alpha = paper alpha × n gives the paper's layer.
    torch_lrn = nn.LocalResponseNorm(SIZE, alpha=ALPHA * SIZE, beta=BETA, k=K)
    impls: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"plain": plain, "torch": torch_lrn}
    if device.type == "cpu":
        impls["cpu"] = lambda x: lrn_fast.lrn_cpu(x, SIZE, ALPHA, BETA, K)
    if compile_plain:
        impls["plain+compile"] = torch.compile(plain, dynamic=False)
    if device.type == "cuda" and lrn_fast.HAVE_TRITON:
        impls["triton"] = lambda x: lrn_fast.lrn_triton(x, SIZE, ALPHA, BETA, K)
    return impls


def bench_lrn(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    impls = lrn_impls(device, args.compile)
    for c, h, w in LRN_SHAPES:
        shape = (args.batch, c, h, w)
        for dname in args.dtypes:
            for fname in args.formats:
                gen = torch.Generator(device="cpu").manual_seed(0)
                # ReLU outputs of a plausible scale (LRN follows the ReLU, §3.3).
                x0 = (torch.randn(shape, generator=gen) * 10).clamp_min_(0)
                x0 = x0.to(device=device, dtype=DTYPES[dname]).contiguous(memory_format=FORMATS[fname])
                g = torch.randn(shape, generator=gen).to(device=device, dtype=DTYPES[dname])
                g = g.contiguous(memory_format=FORMATS[fname])
                ref = lrn_fast.lrn_plain(x0.float(), SIZE, ALPHA, BETA, K)
                for name, f in impls.items():
                    if name == "cpu" and DTYPES[dname] not in lrn_fast.CPU_DTYPES:
                        continue  # lrn_cpu hands these to lrn_plain: the plain row is that measurement
                    x = x0.clone().requires_grad_()

                    def step(f: Callable[[torch.Tensor], torch.Tensor] = f, x: torch.Tensor = x) -> None:
                        x.grad = None
                        f(x).backward(g)

                    try:
                        ms = time_ms(step, device, args.warmup, args.iters)
                    except (RuntimeError, NotImplementedError) as e:  # e.g. torch's LRN in bf16 on CPU
                        msg = str(e).splitlines()[0]
                        rows.append(dict(kind="lrn", impl=name, shape=list(shape), dtype=dname,
                                         memory_format=fname, error=msg))
                        print(f"lrn  {name:14s} {str(shape):20s} {dname:4s} {fname:13s} unsupported: {msg}")
                        continue
                    with torch.no_grad():
                        err = ((f(x0).float() - ref).abs().max() / ref.abs().max()).item()
                    # Least traffic of forward + backward: read x, write y; read x and g, write dx.
                    gbytes = 5 * x0.numel() * x0.element_size() / 1e9
                    row = dict(
                        kind="lrn", impl=name, shape=list(shape), dtype=dname, memory_format=fname,
                        ms_fwd_bwd=round(ms, 4), gb_per_s=round(gbytes / (ms / 1e3), 1), max_rel_err_vs_fp32=err,
                    )
                    rows.append(row)
                    print(f"lrn  {name:14s} {str(shape):20s} {dname:4s} {fname:13s} {ms:9.3f} ms "
                          f"{row['gb_per_s']:8.1f} GB/s  err {err:.1e}", flush=True)
    return rows


def _use_torch_lrn(model: nn.Module) -> nn.Module:
    """Swap our LRN modules for torch.nn.LocalResponseNorm with the same (paper) formula."""
    for name, mod in model.named_children():
        if isinstance(mod, LocalResponseNorm):
            alpha_n = mod.effective_alpha * mod.size
            setattr(model, name, nn.LocalResponseNorm(mod.size, alpha=alpha_n, beta=mod.beta, k=mod.k))
        else:
            _use_torch_lrn(mod)
    return model


def lrn_layers_ms(
    impl: str, batch: int, dtype: torch.dtype, fmt: torch.memory_format, device: torch.device, args: argparse.Namespace
) -> float:
    """Forward + backward of the paper net's two LRN layers alone with one implementation, in ms."""
    f = lrn_impls(device, compile_plain=False)[impl]
    total = 0.0
    for c, h, w in LRN_SHAPES:
        x = torch.randn(batch, c, h, w, device=device).clamp_min_(0).to(dtype).contiguous(memory_format=fmt)
        x.requires_grad_()
        g = torch.randn_like(x)

        def step() -> None:
            x.grad = None
            f(x).backward(g)

        total += time_ms(step, device, args.warmup, args.iters)
    return total


def bench_step(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """One training step (FastStep: forward, loss, backward, the paper's update, §5) of the paper net
    on random input already on the device, without LRN and with each LRN path."""
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    amp = "bf16" if cuda else "none"  # the fast training path: bf16 autocast + channels_last
    variants: list[tuple[str, str, str]] = [("none", "none", "plain"), ("plain", "paper", "plain"), ("torch", "paper", "plain")]
    if cuda and lrn_fast.HAVE_TRITON:
        variants.append(("triton", "paper", "triton"))
    if not cuda:
        variants.append(("cpu", "paper", "auto"))
    modes = ["eager"] + (["compile"] if args.step_compile else [])
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.step_batch, 3, 224, 224, generator=gen).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (args.step_batch,), generator=gen).to(device)
    idx = torch.arange(args.step_batch)
    rows = []
    for mode in modes:
        steps: dict[str, Callable[[], None]] = {}
        for name, lrn, lrn_mode in variants:
            if mode == "compile" and name == "torch":
                continue  # torch's LRN under compile is the same decomposition Inductor fuses: plain covers it
            torch.manual_seed(0)
            model = models.create("alexnet", lrn=lrn)
            if name == "torch":
                _use_torch_lrn(model)
            fs = make_step(model, device, amp=amp, channels_last=cuda, compile=mode == "compile", lr=0.01)

            def step(fs: object = fs, lrn_mode: str = lrn_mode) -> None:
                with lrn_fast.use_mode(lrn_mode):
                    fs(x, y, idx, 0)  # type: ignore[operator]

            for _ in range(args.step_warmup):  # compiles here in compile mode
                step()
            steps[name] = step
        # Round-robin repeats, so that drifting clocks or neighbours on a shared machine hit all variants.
        samples: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.step_repeats):
            for name, step in steps.items():
                samples[name].append(time_ms(step, device, 0, args.step_iters, repeats=1))
        for name, ts in samples.items():
            ms = statistics.median(ts)
            share = None if name == "none" else lrn_share(ms, statistics.median(samples["none"]))
            # The same LRN layers timed alone (eager, the step's batch, dtype and layout): a second
            # estimate that small, noisy CPU steps cannot swamp; under compile the difference is the one.
            dtype = AMP_DTYPES[amp] or torch.float32
            direct = None if name == "none" else lrn_layers_ms(name, args.step_batch, dtype, fmt, device, args)
            row = dict(
                kind="step", model="alexnet", lrn=name, mode=mode, batch=args.step_batch,
                dtype="bf16-autocast" if cuda else "fp32", memory_format="channels_last" if cuda else "nchw",
                ms_per_step=round(ms, 3), img_per_s=round(args.step_batch / (ms / 1e3), 1),
                lrn_share=share,
                lrn_layers_ms=None if direct is None else round(direct, 3),
                lrn_share_direct=None if direct is None else round(direct / ms, 4),
                samples_ms=[round(t, 3) for t in ts],
            )
            rows.append(row)
            extra = "" if share is None else f"  LRN share {share:6.1%} (layers alone {direct / ms:6.1%})"
            print(f"step {mode:7s} lrn={name:7s} batch {args.step_batch:4d} {ms:9.2f} ms "
                  f"{row['img_per_s']:9.1f} img/s{extra}", flush=True)
        steps.clear()
    return rows


def sweep(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Tile sizes for the Triton kernels on the paper shapes (bf16), against kernel_blocks' heuristic."""
    rows = []
    cands = {
        "channels_last": [(bp, bc) for bc in (16, 32, 64, 128) for bp in (8, 16, 32, 64) if 512 <= bp * bc <= 4096],
        "nchw": [(bp, bc) for bc in (4, 8, 16, 32) for bp in (64, 128, 256, 512) if 512 <= bp * bc <= 4096],
    }
    for c, h, w in LRN_SHAPES:
        shape = (args.batch, c, h, w)
        for fname in args.formats:
            x = torch.randn(shape, device=device, dtype=torch.bfloat16).contiguous(memory_format=FORMATS[fname])
            g = torch.randn_like(x)
            cl = fname == "channels_last"
            p = args.batch * h * w if cl else h * w
            for which in ("forward", "backward"):
                heur = lrn_fast.kernel_blocks(c, p, cl, which == "backward")
                results = []
                for blocks in dict.fromkeys([heur, *cands[fname]]):
                    if which == "forward":
                        fn: Callable[[], object] = lambda b=blocks: lrn_fast.triton_forward(x, SIZE, ALPHA, BETA, K, blocks=b)
                    else:
                        fn = lambda b=blocks: lrn_fast.triton_backward(g, x, SIZE, ALPHA, BETA, K, blocks=b)
                    results.append((time_ms(fn, device, 3, 20), blocks))
                best_ms, best = min(results)
                heur_ms = next(ms for ms, b in results if b == heur)
                rows.append(dict(kind="sweep", shape=list(shape), memory_format=fname, kernel=which,
                                 heuristic=list(heur), heuristic_ms=round(heur_ms, 4), best=list(best),
                                 best_ms=round(best_ms, 4)))
                print(f"sweep {which:8s} {str(shape):20s} {fname:13s} heuristic {heur} {heur_ms:.4f} ms, "
                      f"best {best} {best_ms:.4f} ms", flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="batch 2, few iterations: a CPU smoke run")
    ap.add_argument("--batch", type=int, help="batch of the LRN shapes (default 256 on CUDA, 8 on CPU)")
    ap.add_argument("--step-batch", type=int, help="batch of the training step (default 256 on CUDA, 4 on CPU)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16, fp16")
    ap.add_argument("--formats", default="nchw,channels_last", help="comma list of nchw, channels_last")
    ap.add_argument("--iters", type=int, help="timed calls per repeat (LRN rows)")
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--step-iters", type=int)
    ap.add_argument("--step-warmup", type=int)
    ap.add_argument("--step-repeats", type=int, help="round-robin rounds over the step variants (median kept)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="add plain+compile LRN rows (default: on with CUDA)")
    ap.add_argument("--step-compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also time compiled steps (default: on with CUDA; ~1 min of compiling per variant)")
    ap.add_argument("--threads", type=int,
                    help="CPU threads for torch (default: torch's; 1 with --tiny, steady on shared machines)")
    ap.add_argument("--no-step", action="store_true", help="skip the training-step rows")
    ap.add_argument("--sweep", action="store_true", help="CUDA: sweep the Triton kernels' tile sizes")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    big = cuda and not args.tiny
    defaults = dict(
        batch=256 if big else (2 if args.tiny else 8),
        step_batch=256 if big else (2 if args.tiny else 4),
        iters=20 if cuda else (2 if args.tiny else 5),
        warmup=5 if cuda else 1,
        step_iters=20 if cuda else (2 if args.tiny else 3),
        step_warmup=5 if cuda else 1,
        step_repeats=3 if cuda else 5,
        compile=cuda,
        step_compile=big,
        threads=1 if args.tiny and not cuda else None,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.formats = [f for f in args.formats.split(",") if f]
    bad = [d for d in args.dtypes if d not in DTYPES] + [f for f in args.formats if f not in FORMATS]
    if bad:
        ap.error(f"unknown dtype or format {bad[0]!r}; accepted: {', '.join([*DTYPES, *FORMATS])}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("lrn.py: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    # Every (shape, dtype, layout) of the compiled rows is its own static graph of one code object.
    torch._dynamo.config.recompile_limit = 64
    env = environment(device)
    name = device_name(env, device)
    print(f"{name} | torch {torch.__version__} | lrn mode default {lrn_fast.mode()} | "
          f"batch {args.batch}, step batch {args.step_batch}", flush=True)
    t0 = time.perf_counter()
    result = {"device": name, "device_type": device.type, "cpu_threads": torch.get_num_threads(), "environment": env,
              "date": env["date_utc"], "git_sha": env["git_sha"], "config": vars(args)}
    result["lrn"] = bench_lrn(args, device)
    if args.sweep and device.type == "cuda" and lrn_fast.HAVE_TRITON:
        result["sweep"] = sweep(args, device)
    if not args.no_step:
        result["step"] = bench_step(args, device)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    path = write_results(results_path(args.out, f"lrn-{device_slug(env, device)}", env), result, env)
    print(f"wrote {path} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
