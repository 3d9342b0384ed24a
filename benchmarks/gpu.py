"""Training throughput of the paper's network on one GPU: end to end, model only, MFU, hours for 90 epochs.

    benchmarks/gpu_run.sh OUTDIR                                        # the GPU machine's one run: preflight + this, ≤ 6 min
    PYTHONPATH=src python3 benchmarks/gpu.py --preflight                # seconds: versions, /dev/shm, GPU, LRN, one step
    PYTHONPATH=src python3 benchmarks/gpu.py                            # one H100: finishes within ~7 minutes
    PYTHONPATH=src python3 benchmarks/gpu.py --plan --device cuda       # the rows and their estimated seconds, anywhere
    PYTHONPATH=src python3 benchmarks/gpu.py --device cpu --tiny        # toy scale on the CPU: tests the code path
    python3 benchmarks/gpu.py --markdown benchmarks/results/gpu-….json  # the tables the documentation quotes (docs/speed.md)

A composition of :mod:`alexnet.perf`: this script names the model builds (:func:`variants`) and the
rows in order of importance (:func:`plan`, data: :class:`alexnet.perf.rows.Row`); the rows are
measured by :class:`alexnet.perf.rows.Bench` (model-only steps, our loader end to end, torchvision's
reference recipe on the same JPEGs, the loader alone, ``alexnet train`` itself; FLOPs, MFU, hours
for 90 epochs), each one guarded (:class:`alexnet.perf.guarded.GuardedRun`: a row that fails or runs
past ``--row-timeout`` is an ``error`` row, one that would end past ``--deadline`` is "skipped", a
failing dataset build or FLOP count is recorded under ``errors``; the run goes on). The results file
(``--out``/gpu-<device>-<date>.json, :mod:`alexnet.perf.results`) is rewritten after every row, so a
killed run keeps what it measured; :mod:`alexnet.perf.markdown` makes its tables. What each row
measures, the targets and the verdicts: benchmarks/README.md.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the deadline counts from here: imports of torch & co. included

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from alexnet import models
from alexnet.data.processes import usable_cpus
from alexnet.environment import environment
from alexnet.models.layers import two_tower_convs
from alexnet.perf.markdown import markdown
from alexnet.perf.preflight import preflight
from alexnet.perf.results import device_slug, results_path
from alexnet.perf.rows import Bench, Row, Settings, Variant

ROOT = Path(__file__).resolve().parent
MODES = ("model-only", "end-to-end", "train")


def variants() -> dict[str, Variant]:
    """The builds timed: the paper net (with LRN, without, its towers as two convolutions),
    alexnet-owt and torchvision's AlexNet (torch.optim.SGD, mean/std input)."""
    def tv() -> torch.nn.Module:
        import torchvision

        return torchvision.models.alexnet(weights=None)

    paper, owt = models.info("alexnet").input_norm, models.info("alexnet-owt").input_norm
    vs = [
        Variant("alexnet", "alexnet", "", lambda: models.create("alexnet"), True, paper, lrn=True, end_to_end=True),
        Variant("alexnet-nolrn", "alexnet", "lrn=none", lambda: models.create("alexnet", lrn="none"), True, paper,
                flops_as="alexnet"),
        Variant("alexnet-towers", "alexnet", "towers as two convs", lambda: two_tower_convs(models.create("alexnet")),
                True, paper, lrn=True, flops_as="alexnet"),
        Variant("alexnet-owt", "alexnet-owt", "", lambda: models.create("alexnet-owt"), True, owt, end_to_end=True),
        Variant("torchvision", "torchvision alexnet", "", tv, False, "mean_std", end_to_end=True),
    ]
    return {v.key: v for v in vs}


def plan(a: argparse.Namespace, cuda: bool) -> list[Row]:
    """Rows in order of importance (a deadline drops the tail). The headline rows first: the
    paper's net compiled and, right after it, without LRN (LRN's share of the step); ``alexnet
    train`` itself (the engine's run(): what a user gets); the same step end to end; torchvision's
    reference recipe on the same JPEGs (after its model-only step); alexnet-owt model-only and end to
    end. Then the GPU-decoding rows (nvJPEG: a sticky CUDA error there cannot cost a row above), then
    the rest, then the extras."""
    main = "compile" if a.compile else "eager"  # the step alexnet train runs on this device (fast recipe)
    mo, e2e, tr = "model-only" in a.only, "end-to-end" in a.only, "train" in a.only
    first = [d for d in a.decode if d == "cpu"][:1] or a.decode[:1]  # the headline rows' decoding
    gpu_decode = [d for d in a.decode if d not in first]
    rows = [Row("model-only", "alexnet", main)]  # also what the end-to-end rows of alexnet train with
    rows += [Row("model-only", "alexnet-nolrn", "compile")] if mo and a.compile else []
    rows += [Row("train", decode=d) for d in (first if tr else [])]
    rows += [Row("end-to-end", "alexnet", decode=d) for d in (first if e2e else [])]
    rows += [Row("model-only", "torchvision", "eager")]  # also the reference recipe's step
    rows += [Row("reference", "torchvision")] if e2e else []
    rows += [Row("model-only", "alexnet-owt", main)]
    rows += [Row("end-to-end", "alexnet-owt", decode=d) for d in (first if e2e else [])]
    for d in gpu_decode:
        rows += [Row("end-to-end", "alexnet", decode=d), Row("end-to-end", "alexnet-owt", decode=d)] if e2e else []
        rows += [Row("train", decode=d)] if tr else []
    if mo:
        for kind in ["eager"] if a.compile else []:
            rows += [Row("model-only", "alexnet", kind), Row("model-only", "alexnet-owt", kind)]
        rows += [Row("model-only", "alexnet-nolrn", "eager"),
                 Row("model-only", "torchvision", "eager", options=(("augment", False),))]
    if e2e:
        rows += [Row("loader-only", decode=d) for d in a.decode]
        rows += [Row("reference", "torchvision", imagenet_size=True)] if a.imagenet_size_images > 0 else []
    # --tiny leaves out rows whose code path the rows above already run (another model, the same step).
    if mo and not a.tiny:
        rows += [Row("model-only", "torchvision", "compile")] if a.compile else []
        rows += [Row("model-only", "alexnet-towers", "eager")]
        if "lrn-plain" in a.extras and a.compile:
            rows.append(Row("model-only", "alexnet", "compile", options=(("lrn_mode", "plain"),)))
        if "cudagraphs" in a.extras and a.compile and cuda:
            rows.append(Row("model-only", "alexnet", "compile+cudagraphs"))
        if "towers-compiled" in a.extras and a.compile:
            rows.append(Row("model-only", "alexnet-towers", "compile"))
    return rows


def make_bench(args: argparse.Namespace, device: torch.device, env: dict[str, Any], path: Path) -> Bench:
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    return Bench.start(settings, device, env, variants(), path, config=vars(args), deadline=args.deadline,
                       row_timeout=args.row_timeout, t0=START)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", type=Path, metavar="RESULTS.json", help="print the markdown tables of a result file and exit")
    ap.add_argument("--preflight", action="store_true",
                    help="seconds: versions, /dev/shm, the GPU, the LRN op and one compiled step at the paper's shapes")
    ap.add_argument("--plan", action="store_true",
                    help="print the rows this run would measure, each with its estimated seconds, and exit (no GPU "
                         "needed: --plan --device cuda shows the GPU machine's plan)")
    ap.add_argument("--device", default=None, help="cuda (default when available), cuda:N, cpu")
    ap.add_argument("--tiny", action="store_true", help="toy scale (batch 2, few steps, 48 images): tests the code path")
    ap.add_argument("--only", choices=MODES, help="one of the two parts (default: both)")
    ap.add_argument("--time-budget", type=float, help="seconds per measurement, compilation excluded (default 5; tiny 0.5)")
    ap.add_argument("--deadline", type=float,
                    help="seconds for the whole run: what would end later is skipped (default 420 on CUDA; 0: none)")
    ap.add_argument("--batch", type=int, help="batch size (default 256; tiny 2)")
    ap.add_argument("--workers", type=int, help="loader workers, ours and the DataLoader's (default: CPU count - 1; tiny 1)")
    ap.add_argument("--images", type=int, help="real-photo JPEGs to build (default 32768; tiny 24)")
    ap.add_argument("--synthetic-images", type=int, default=16384, help="cap on the fallback synthetic set (slower to draw)")
    ap.add_argument("--imagenet-size-images", type=int,
                    help="ImageNet-sized JPEGs for the second reference run (default 24576; tiny 16; 0: skip it)")
    ap.add_argument("--decode", help="comma list of our loader's decode modes (default cpu,auto on CUDA; cpu otherwise)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also the torch.compile'd steps (default: on CUDA; with --tiny on the CPU: backend 'eager')")
    ap.add_argument("--compile-backend", help="torch.compile backend (default inductor; eager with --tiny on the CPU)")
    ap.add_argument("--extras", help="comma list of optional last rows if time remains: lrn-plain, cudagraphs, "
                                     "towers-compiled (default lrn-plain,cudagraphs; tiny none)")
    ap.add_argument("--amp", choices=["bf16", "none"],
                    help="autocast dtype (default bf16 on CUDA, none on the CPU: CPUs without native bf16 "
                         "emulate it, about 60x slower than fp32)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--warmup", type=int, help="untimed steps after the first (default 5; tiny 0)")
    ap.add_argument("--rounds", type=int, help="timed rounds per model-only measurement, median kept (default 3; tiny 1)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; tiny 1)")
    ap.add_argument("--build-procs", type=int, help="processes drawing the JPEGs (default: CPU count)")
    ap.add_argument("--row-timeout", type=float,
                    help="seconds one row (or the dataset build, or the FLOP count) may take before it is abandoned "
                         "as an error row (default 300 on CUDA, 120 otherwise; 0: none)")
    ap.add_argument("--compile-estimate", type=float, default=75.0, help="seconds assumed per compilation before the first")
    ap.add_argument("--build-estimate", type=float, default=40.0, help="seconds assumed to build the photo set")
    ap.add_argument("--work-dir", type=Path, help="where the datasets are built (default: a temporary folder, removed)")
    ap.add_argument("--out", type=Path, default=ROOT / "results", help="folder of the result file")
    args = ap.parse_args(argv)
    if args.markdown or args.preflight:
        return args
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    cpus = usable_cpus()
    tiny = args.tiny
    defaults: dict[str, Any] = dict(
        time_budget=0.5 if tiny else 5.0,
        deadline=0.0 if not cuda else (300.0 if tiny else 420.0),
        batch=2 if tiny else 256,
        workers=1 if tiny else max(1, cpus - 1),
        images=24 if tiny else 32768,
        imagenet_size_images=16 if tiny else 24576,
        decode="cpu,auto" if cuda else "cpu",
        extras="" if tiny else "lrn-plain,cudagraphs",
        compile=cuda or tiny,
        compile_backend="inductor" if cuda else "eager",
        warmup=0 if tiny else 5,
        rounds=1 if tiny else 3,
        threads=1 if tiny and not cuda else None,
        build_procs=2 if tiny else cpus,
        row_timeout=300.0 if cuda else 120.0,
        amp="bf16" if cuda else "none",
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if tiny:
        args.synthetic_images = min(args.synthetic_images, args.images)
    args.only = [args.only] if args.only else list(MODES)
    args.decode = [d for d in args.decode.split(",") if d]
    args.extras = [e for e in args.extras.split(",") if e]
    bad = [d for d in args.decode if d not in ("cpu", "cuda", "auto")]
    bad += [e for e in args.extras if e not in ("lrn-plain", "cudagraphs", "towers-compiled")]
    if bad:
        ap.error(f"unknown decode mode or extra {bad[0]!r}")
    if args.batch < 1 or args.workers < 0 or args.images < args.batch:
        ap.error("need --batch ≥ 1, --workers ≥ 0 and --images ≥ --batch")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    if args.preflight:
        return 0 if preflight(torch.device(args.device) if args.device else None) else 1
    device = torch.device(args.device)
    if args.plan:
        args.work_dir = args.work_dir or Path(tempfile.gettempdir())  # nothing is built
        bench = make_bench(args, device, {"cuda_device": args.device, "processor": args.device}, args.out / "unused.json")
        print(f"dataset build ~{args.build_estimate:.0f} s, FLOP count ~5 s (before the rows)")
        bench.data["prepared"] = None  # the rows' estimates, as after the build
        bench.show_plan(plan(args, bench.cuda), args.build_estimate + 5 + 10, args.deadline)  # 10 s: imports, start-up
        return 0
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: --device cuda but CUDA is not available (use --device cpu --tiny for the CPU smoke run)",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    own_work = args.work_dir is None
    args.work_dir = Path(tempfile.mkdtemp(prefix="alexnet-gpu-bench-")) if own_work else args.work_dir
    try:
        # Every model and step kind compiles the same step function once: room for all of them.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as torchvision's reference training script sets it
        env = environment(device)
        path = results_path(args.out, f"gpu-{device_slug(env, device, 48)}", env)
        bench = make_bench(args, device, env, path)
        run = bench.run
        run.save()
        if "end-to-end" in args.only or "train" in args.only:  # first: its worker processes fork before CUDA and the compilers start threads
            run.phase("dataset", bench.dataset)
        print(f"{bench.device_name} | {env['cpu_count']} CPUs | torch {torch.__version__} | batch {args.batch} | "
              f"workers {args.workers} | budget {args.time_budget}s per measurement | deadline {args.deadline or '—'}s",
              flush=True)
        run.phase("flops", bench.count_flops)
        rows = plan(args, bench.cuda)
        run.plan = bench.show_plan(rows, run.elapsed(), args.deadline)
        run.save()
        for row in rows:
            bench.measure(row)
        bench.add_ratios()
        print()
        print(markdown(json.loads(path.read_text())))
        print(f"\nwrote {path} ({run.elapsed():.0f} s)")
        return 0
    finally:
        if own_work:
            shutil.rmtree(args.work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
