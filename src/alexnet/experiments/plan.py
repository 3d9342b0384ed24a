"""``alexnet experiment NAME --plan``: what an experiment would train, before any compute.

The experiment's own code runs with a planning :class:`~alexnet.experiments.runner.Runner` (in a
temporary folder; nothing is trained, every run returns a chance-level placeholder), so the plan is
the runs the experiment makes, not a second description of them. A sweep that would extend at an
edge is counted at its bound (:data:`~alexnet.experiments.runner.MAX_EXTEND` rates per arm), not
enumerated: the plan gives the runs without extension and the most the extensions can add.

The time comes from throughputs the caller measures (``alexnet experiment --plan`` times a few
training and evaluation steps of each distinct network on this machine) and from a stated GPU
throughput (:data:`GPU_IMG_S`, or the caller's).
"""

from __future__ import annotations

import importlib
import json
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from alexnet.experiments import check_options, default_seeds, info

# Stated GPU training throughputs (images/s), with their source. The paper's network: the training
# step (bf16, channels_last, torch.compile, batch 256, random input already on the device) on one
# H100, torch 2.11, measured 2026-11-28 (the project's anchors); end to end with JPEG loading the
# target is at least 20,000 img/s. No GPU number has been measured for the 32×32 nets: give one.
GPU_IMG_S: dict[str, tuple[float, str]] = {
    "alexnet": (19_144.0, "paper net training step, bf16 + channels_last + compile, one H100 (measured 2026-11-28)"),
}


@dataclass
class Plan:
    experiment: str
    scale: str
    data: str
    seeds: list[int]
    runs: list[dict[str, Any]]
    extension_bound: int  # runs the sweeps may add beyond the grid, at most
    protocol: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the plan leaves out

    @property
    def train_images(self) -> int:
        return sum(r["train_images"] for r in self.runs)

    @property
    def eval_images(self) -> int:
        return sum(r["eval_images"] for r in self.runs)

    def networks(self) -> list[tuple[str, dict[str, Any], int]]:
        """The distinct (model, options, batch size) of the runs, in order of first appearance."""
        seen: dict[str, tuple[str, dict[str, Any], int]] = {}
        for r in self.runs:
            key = json.dumps([r["model"], r["model_options"], r["batch_size"]], sort_keys=True)
            seen.setdefault(key, (r["model"], r["model_options"], r["batch_size"]))
        return list(seen.values())

    def seconds(self, train_ips: Callable[[dict[str, Any]], float | None],
                eval_ips: Callable[[dict[str, Any]], float | None]) -> tuple[float | None, float | None]:
        """Expected seconds (without extensions, and the most with them) from each run's training
        and evaluation throughput; None when a throughput is unknown."""
        total = 0.0
        per_run = []
        for r in self.runs:
            t, e = train_ips(r), eval_ips(r)
            if not t or not e:
                return None, None
            s = r["train_images"] / t + r["eval_images"] / e
            total += s
            per_run.append(s)
        worst = max(per_run) if per_run else 0.0
        return total, total + self.extension_bound * worst


def make_plan(name: str, data: str, *, scale: str, seeds: int | None = None, factors: bool = False,
              threshold: float | None = None) -> Plan:
    """Enumerate experiment ``name``'s runs at ``scale`` on ``data`` without training any."""
    from alexnet.experiments.runner import Runner

    check_options(name, factors, threshold)
    mod = importlib.import_module(info(name).module)
    with tempfile.TemporaryDirectory(prefix="alexnet-plan-") as tmp:
        runner = Runner(name, data, tmp, seeds=seeds or default_seeds(name, scale), scale=scale, device="cpu",
                        log=lambda s: None, factors=factors, threshold=threshold, planning=True)
        mod.run(runner)
        return Plan(name, scale, data, list(runner.seeds), list(runner.planned), runner.plan_extensions,
                    dict(runner.protocol), list(runner.plan_notes))


def hours(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def busy_note(load_1m: float | None, cpus: int) -> str | None:
    """A warning when other work ran while the throughput was measured: a 1-minute load average of a
    core's worth or more (``load_1m`` read just before the probe). The probe then measures a share of
    the machine, so the expected times here are too long by up to about (load + own threads) / cpus."""
    if load_1m is None or load_1m < 1.0:
        return None
    return (f"warning: the machine was busy when the throughput was measured (1-minute load average "
            f"{load_1m:.1f} on {cpus} CPUs): the img/s above are low and the expected time here is "
            f"pessimistic; plan on a quiet machine")


def describe(plan: Plan, cpu: Mapping[str, tuple[float, float]], gpu_img_s: float | None, gpu_source: str,
             cpu_label: str, busy: str | None = None) -> str:
    """The plan as text: one line per distinct network, the totals, the expected times.
    ``cpu``: (model, options, batch) key -> (training, evaluation) images/s measured here;
    ``busy``: :func:`busy_note`'s warning, printed after the time expected here."""
    def key(r: Mapping[str, Any]) -> str:
        return json.dumps([r["model"], r["model_options"], r["batch_size"]], sort_keys=True)

    lines = [f"experiment {plan.experiment}, scale {plan.scale}, data {plan.data}, seeds {plan.seeds}"]
    lines.append(f"{len(plan.runs)} runs, {plan.train_images:,} training images, {plan.eval_images:,} evaluated; "
                 f"sweeps that extend at an edge add at most {plan.extension_bound} runs")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in plan.runs:
        groups.setdefault(key(r), []).append(r)
    for k, rs in groups.items():
        r0 = rs[0]
        opts = ", ".join(f"{a}={b}" for a, b in sorted(r0["model_options"].items())) or "defaults"
        t, e = cpu.get(k, (None, None))
        lines.append(f"  {len(rs):3d} x {r0['model']} ({opts}), batch {r0['batch_size']}: "
                     f"{', '.join(map(str, sorted({x['epochs'] for x in rs})))} epochs of "
                     f"{', '.join(format(v, ',') for v in sorted({x['images_per_epoch'] for x in rs}))} images"
                     + (f"; measured here {t:,.0f} img/s training, {e:,.0f} evaluating" if t and e else ""))
    labelled: dict[str, list[dict[str, Any]]] = {}
    for r in plan.runs:
        if r.get("group"):
            labelled.setdefault(r["group"], []).append(r)
    for label, rs in labelled.items():
        part = Plan(plan.experiment, plan.scale, plan.data, plan.seeds, rs, 0)
        t, _ = part.seconds(lambda r: cpu.get(key(r), (None, None))[0], lambda r: cpu.get(key(r), (None, None))[1])
        lines.append(f"  {label}: {len(rs)} run{'s' if len(rs) > 1 else ''}, "
                     f"{', '.join(map(str, sorted({x['epochs'] for x in rs})))} epochs of "
                     f"{', '.join(format(v, ',') for v in sorted({x['images_per_epoch'] for x in rs}))} images "
                     f"({part.train_images:,} training images)"
                     + (f", expected here {hours(t)}" if t is not None else ""))
    lines += [f"note: {n}" for n in plan.notes]
    lo, hi = plan.seconds(lambda r: cpu.get(key(r), (None, None))[0], lambda r: cpu.get(key(r), (None, None))[1])
    lines.append(f"expected on this machine ({cpu_label}): {hours(lo)}"
                 + (f" (up to {hours(hi)} if every sweep extends to its bound)" if plan.extension_bound else ""))
    if busy:
        lines.append(busy)
    if gpu_img_s:
        # The GPU evaluates at about three times its training rate (forward only).
        glo, ghi = plan.seconds(lambda r: gpu_img_s, lambda r: 3 * gpu_img_s)
        lines.append(f"expected on a GPU at {gpu_img_s:,.0f} img/s ({gpu_source}): {hours(glo)}"
                     + (f" (up to {hours(ghi)})" if plan.extension_bound else "")
                     + f" = {(glo or 0) / 3600:.2f} GPU-hours")
    else:
        lines.append("expected on a GPU: no GPU throughput is stated for this network; give --gpu-img-s N")
    return "\n".join(lines)


__all__ = ["GPU_IMG_S", "Plan", "busy_note", "describe", "hours", "make_plan"]
