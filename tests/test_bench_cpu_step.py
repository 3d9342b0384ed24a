"""benchmarks/cpu_step.py's and cpu_step_parts.py's smoke modes, and the helpers they are made of (alexnet.perf.ceiling, alexnet.perf.timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet import models
from alexnet.perf.ceiling import conv_layer_rates, conv_shapes, fraction
from alexnet.perf.flops import flops_per_image
from alexnet.perf.timing import time_calls

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "cpu_step.py"
PARTS = REPO / "benchmarks" / "cpu_step_parts.py"


def _build():
    return models.create("alexnet-cifar", 10)


def _worktrees() -> set[str]:
    out = subprocess.run(["git", "-C", str(REPO), "worktree", "list", "--porcelain"], capture_output=True, text=True).stdout
    return {line for line in out.splitlines() if line.startswith("worktree ")}


def test_conv_shapes_are_the_nets_layers():
    """32×32 -> conv1 on 3×32×32, conv2 on 32×16×16, conv3 on 32×8×8 (after each 3×3/2 pool)."""
    shapes = [s for _, s in conv_shapes(_build, 4, 32)]
    assert shapes == [(4, 3, 32, 32), (4, 32, 16, 16), (4, 32, 8, 8)]


def test_conv_flops_are_the_closed_form_and_the_step_count():
    """Each layer's forward is 2·N·C_out·H·W·C_in·5·5 FLOPs; backward doubles it except conv1 (no input
    gradient). With the classifier's 3 × 2·1024·10 they add up to FlopCounterMode's count per image."""
    rows = conv_layer_rates(_build, 1, 32, channels_last=False, repeats=1, iters=1)
    fwd = [2 * 32 * 32 * 32 * 3 * 25, 2 * 32 * 16 * 16 * 32 * 25, 2 * 64 * 8 * 8 * 32 * 25]
    expect = [2 * fwd[0], 3 * fwd[1], 3 * fwd[2]]
    assert [round(r["gflop_fwd_bwd"] * 1e9) for r in rows] == pytest.approx(expect, abs=1e5)
    assert sum(expect) + 3 * 2 * 1024 * 10 == pytest.approx(flops_per_image(_build, 32), rel=1e-6)
    assert all(r["ms"] > 0 and r["gflop_per_s"] >= 0 for r in rows)
    assert fraction(1000.0, 69e6, 69.0) == 1.0


def test_quick_mode_writes_every_row_and_the_baseline_comparison(tmp_path):
    """--quick with --baseline HEAD: the ceiling (matmul, 3 conv layers × 2 layouts), the plain loop,
    both `alexnet train` settings for ours and the baseline (a git worktree of HEAD, in a subprocess),
    with the environment; the worktree is removed afterwards."""
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: no baseline to check out")
    before = _worktrees()
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--baseline", "HEAD", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = tmp_path.glob("cpu-step-quick-*.json")
    res = json.loads(path.read_text())
    assert res["environment"]["git_sha"] and res["environment"]["torch"]
    assert res["ceiling"]["gemm"]["gflop_per_s"] > 0
    assert len(res["ceiling"]["conv_layers"]) == 6
    assert res["plain_loop"][0]["img_per_s"] > 0
    assert [t["recipe"] for t in res["train"]] == ["demo", "cifar"]
    for t in res["train"]:
        assert t["ours"]["img_per_s"] > 0 and t["baseline"]["img_per_s"] > 0 and t["speedup"] > 0
        assert 0 < t["ours"]["fraction_of_gemm"]
    assert len(res["baseline"]["git_sha"]) == 40
    assert _worktrees() == before


def test_time_calls_reads_the_clock_it_is_given():
    """A clock that advances one second per reading: each repeat is one second over ``iters`` calls,
    whatever the wall clock did; the warm-up calls are not timed."""
    ticks = iter(range(100))
    calls = []
    samples = time_calls(lambda: calls.append(1), torch.device("cpu"), iters=4, repeats=3, warmup=2,
                         clock=lambda: float(next(ticks)))
    assert samples == [0.25, 0.25, 0.25]
    assert len(calls) == 2 + 3 * 4


def test_parts_quick_writes_the_step_breakdown(tmp_path):
    """benchmarks/cpu_step_parts.py --quick: the demo step with and without LRN, its augmentation and the
    three conv layers, in thread CPU time, with the environment."""
    r = subprocess.run([sys.executable, str(PARTS), "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = tmp_path.glob("cpu-step-parts-quick-*.json")
    res = json.loads(path.read_text())
    assert res["environment"]["torch"] and res["clock"] == "thread_time" and res["threads"] == 1
    (row,) = res["settings"]
    assert (row["recipe"], row["batch"]) == ("demo", 32)
    assert row["step_ms"] > 0 and row["step_ms_lrn_none"] > 0 and row["augment_ms"] > 0
    assert row["lrn_ms"] == pytest.approx(row["step_ms"] - row["step_ms_lrn_none"], abs=2e-3)
    assert [c["layer"] for c in row["convs"]] == ["conv1", "conv2", "conv3"] and row["convs_ms"] > 0
