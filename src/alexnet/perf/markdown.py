"""The markdown tables of a GPU benchmark's results file (:mod:`alexnet.perf.rows`, written by
:class:`alexnet.perf.guarded.GuardedRun`): what the documentation quotes, rows that were not measured
included with their reason."""

from __future__ import annotations

import math
from typing import Any


def _precision(config: dict[str, Any]) -> str:
    amp = config.get("amp", "bf16")  # results written before the option existed ran bf16
    parts = ["bf16 autocast" if amp == "bf16" else "fp32"]
    if config.get("channels_last", True):
        parts.append("channels_last")
    return " + ".join(parts)


def _fmt(v: Any, spec: str = ",.0f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    """The tables of a GPU benchmark's results file: the header (machine, versions, git, batch, wall
    time), the phases that failed, the model-only rows, the end-to-end, loader-only and train rows,
    the FLOP counts."""
    rows = result["rows"]
    ver = result.get("versions", {})
    lines = [
        f"**{result.get('device')}** · {result.get('host_cpus')} CPUs ({result.get('cpu', '?')}) · torch {ver.get('torch')} · "
        f"torchvision {ver.get('torchvision')} · triton {ver.get('triton')} · CUDA {ver.get('cuda')} · cuDNN {ver.get('cudnn')} · "
        f"driver {ver.get('driver')} · {str(result.get('date', ''))[:10]} · git {str(result.get('git_sha') or '')[:10]}"
        f"{' (dirty)' if result.get('git_dirty') else ''} · batch {result.get('config', {}).get('batch')} · "
        f"wall {result.get('wall_s')} s",
        "",
    ]
    for err in result.get("errors") or []:
        lines += [f"**{err['phase']} failed**: {err['error']}", ""]
    mo = [r for r in rows if r.get("mode") == "model-only"]
    if mo:
        spec = next((r.get("peak_tflops_spec") for r in mo if r.get("peak_tflops_spec")), None)
        meas = next((r.get("peak_tflops_measured") for r in mo if r.get("peak_tflops_measured")), None)
        lines += [
            "Model only: random uint8 batch on the device → augmentation → forward, loss, backward, optimizer step "
            f"({_precision(result.get('config', {}))}).",
            "",
            f"| model | variant | step | img/s | ms/step | TFLOP/s | MFU (vs {_fmt(spec)} / {_fmt(meas)}) | 90 epochs (h) | LRN share |",
            "|---|---|---|--:|--:|--:|--:|--:|--:|",
        ]
        for r in mo:
            if r.get("img_per_s") is None:
                why = r.get("skipped") or r.get("error")
                lines.append(f"| {r['model']} | {r.get('variant') or '—'} | {r.get('step')} | not measured: {why} | | | | | |")
                continue
            mfu = (f"{_fmt(r.get('mfu_spec'), '.1%')} / {_fmt(r.get('mfu_measured_peak'), '.1%')}"
                   if r.get("mfu_spec") is not None else "—")
            lines.append(f"| {r['model']} | {r.get('variant') or '—'} | {r['step']} | {_fmt(r['img_per_s'])} | "
                         f"{_fmt(r.get('ms_per_step'), '.2f')} | {_fmt(r.get('tflop_per_s'), '.1f')} | {mfu} | "
                         f"{_fmt(r.get('hours_90_epochs'), '.2f')} | {_fmt(r.get('lrn_share'), '.1%')} |")
        lines.append("")
    e2e = [r for r in rows if r.get("mode") in ("end-to-end", "loader-only", "train")]
    if e2e:
        photos = {r.get("photos") for r in e2e if "photos" in r}
        kind = "real-photo" if photos == {True} else ("SYNTHETIC photo-like (no scikit-image)" if photos == {False} else "mixed")
        lines += [
            f"End to end: {kind} JPEGs → loader (workers) → augmentation on the device → step; steady state inside an "
            "epoch, after draining the prefetch queue. Train: `alexnet train` itself (the engine's run()), the second "
            "of two epochs as the run reports it; the last column counts its evaluation and checkpoints too.",
            "",
            "| model | mode | loader | decode | workers | step | img/s | × reference (same JPEGs / ImageNet-sized) | "
            "90 epochs (h) | with epoch restarts (train: whole epoch) |",
            "|---|---|---|---|--:|---|--:|--:|--:|--:|",
        ]
        for r in e2e:
            name = r.get("model") or "—"
            if r.get("variant"):
                name += f" ({r['variant']})"
            if r.get("img_per_s") is None:
                why = r.get("skipped") or r.get("error")
                lines.append(f"| {name} | {r['mode']} | {r.get('loader')} | {r.get('decode')} | {r.get('workers')} | — | "
                             f"not measured: {why} | | | |")
                continue
            x = "—"
            if r.get("x_reference") is not None or r.get("x_reference_imagenet_size") is not None:
                x = f"{_fmt(r.get('x_reference'), '.1f')}× / {_fmt(r.get('x_reference_imagenet_size'), '.1f')}×"
            lines.append(f"| {name} | {r['mode']} | {r.get('loader')} | {r.get('decode')} | {r.get('workers')} | "
                         f"{r.get('step', '—')} | {_fmt(r['img_per_s'])} | {x} | {_fmt(r.get('hours_90_epochs'), '.2f')} | "
                         f"{_fmt(r.get('img_per_s_with_restarts', r.get('img_per_s_epoch_wall')))} |")
        lines.append("")
    fl = result.get("flops_per_image") or {}
    if fl:
        lines.append("FLOPs per image (forward + backward, FlopCounterMode, grouped-conv weight gradients counted "
                     "once per group): " + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in fl.items()) + ".")
    return "\n".join(lines)


__all__ = ["markdown"]
