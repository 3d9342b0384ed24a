"""benchmarks/gpu.py at toy scale on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from alexnet import models

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"


def _hand_flops(model: nn.Module, size: int = 224) -> float:
    """Forward + backward FLOPs per image from the layers' shapes: 2 × multiply-adds forward; backward
    twice that (input and weight gradients), except conv1 whose input needs no gradient."""
    fwd: list[tuple[nn.Module, float]] = []

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            fwd.append((mod, 2.0 * out.numel() * k))
        elif isinstance(mod, nn.Linear):
            fwd.append((mod, 2.0 * mod.in_features * mod.out_features * out.shape[0]))

    hs = [mod.register_forward_hook(hook) for mod in model.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hs:
        h.remove()
    total = sum(3 * f for _, f in fwd) - fwd[0][1]  # conv1: no input gradient
    return total


def test_tiny_run_writes_rows_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # The timeout guards against a hang only; speed is measured by the benchmark, never here.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out),
                           "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.glob("gpu-cpu-*.json"))
    assert len(files) == 1
    result = json.loads(files[0].read_text())
    # On the CPU the default is fp32: CPUs without native bf16 emulate bf16 autocast many times slower.
    assert result["config"]["amp"] == "none", result["config"]
    rows = result["rows"]
    errors = [r for r in rows if r.get("error") or r.get("skipped")]
    assert not errors, errors
    for r in rows:
        for key in ("device", "model", "mode", "img_per_s", "batch", "workers", "versions", "date", "git_sha", "host_cpus"):
            assert key in r, (key, r)
        assert r["img_per_s"] > 0
        assert r["hours_90_epochs"] == pytest.approx(90 * 1_281_167 / r["img_per_s"] / 3600, rel=0.01)
        assert {"torch", "torchvision", "cuda", "driver"} <= set(r["versions"])
    mo = [r for r in rows if r["mode"] == "model-only"]
    e2e = [r for r in rows if r["mode"] == "end-to-end"]
    assert {(r["model"], r["step"]) for r in mo} >= {("alexnet", "eager"), ("alexnet", "compile"), ("alexnet-owt", "eager"),
                                                      ("alexnet-owt", "compile"), ("torchvision alexnet", "eager")}
    assert any(r["variant"] == "no augmentation (random float input)" for r in mo)
    assert any(r["variant"] == "lrn=none" for r in mo)
    paper = next(r for r in mo if r["model"] == "alexnet" and r["variant"] == "" and r["step"] == "eager")
    none = next(r for r in mo if r["variant"] == "lrn=none" and r["step"] == "eager")
    assert paper["lrn_share"] == pytest.approx(1 - none["ms_per_step"] / paper["ms_per_step"], abs=1e-3)
    assert none["lrn_share"] == paper["lrn_share"]
    # Ours through the real loader, and the reference recipe on the same JPEGs and on ImageNet-sized ones.
    ours = [r for r in e2e if r["loader"] == "alexnet BatchLoader"]
    assert {r["model"] for r in ours} == {"alexnet", "alexnet-owt"}
    assert {r["variant"] for r in e2e if r["model"] == "torchvision alexnet"} == {
        "reference recipe", "reference recipe, ImageNet-sized JPEGs"}
    for r in e2e:
        assert r["photos"] is True  # scikit-image is installed here
        assert r["timed_images"] > 0 and r["skipped_batches_per_epoch"] == r["workers"] * 2 + 1
    ref = next(r for r in e2e if r["variant"] == "reference recipe")
    for r in ours:
        assert r["x_reference"] == pytest.approx(r["img_per_s"] / ref["img_per_s"], rel=0.01)
        assert r["step"] in ("eager", "compile")
    assert any(r["mode"] == "loader-only" for r in rows)
    # alexnet train itself (the engine's run()): the second of two epochs, with evaluation and checkpoints.
    (train,) = [r for r in rows if r["mode"] == "train"]
    assert train["decode"] == "cpu" and train["model"] == "alexnet" and train["photos"] is True
    assert train["steps_per_epoch"] == 3 and train["train_images_per_epoch"] == 3 * 2 and train["val_images"] == 4
    assert 0 < train["img_per_s_epoch_wall"] < train["img_per_s"]  # the whole epoch: evaluation and checkpoint too
    assert train["first_epoch_s"] > 0 and train["save_every"] == 1
    assert train["recipe"]["optimizer"] == "PaperSGD §5 (foreach)" and train["recipe"]["compile"] is False
    assert train["x_reference"] == pytest.approx(train["img_per_s"] / ref["img_per_s"], rel=0.01, abs=0.005)
    # The plan: headline rows first, the compiled no-LRN net right after the compiled paper net, then
    # alexnet train; every row says how long it took, every plan entry its estimate.
    plan = [p["row"] for p in result["plan"]]
    assert plan[:3] == ["model-only alexnet compile", "model-only alexnet-nolrn compile", "train alexnet decode cpu"]
    assert plan.index("end-to-end torchvision reference recipe") < plan.index("model-only alexnet-owt compile")
    assert all(p["estimate_s"] > 0 for p in result["plan"]) and len(plan) == len(rows)
    assert [(r["mode"], r["model"], r.get("step")) for r in rows[:3]] == [
        ("model-only", "alexnet", "compile"), ("model-only", "alexnet", "compile"), ("train", "alexnet", "eager")]
    assert rows[1]["variant"] == "lrn=none"
    assert all(r["row_s"] > 0 for r in rows)
    # FLOPs counted by FlopCounterMode agree with a count from the layer shapes.
    fl = result["flops_per_image"]
    assert fl["alexnet-owt"] == pytest.approx(_hand_flops(models.create("alexnet-owt")), rel=1e-6)
    assert fl["alexnet"] == pytest.approx(_hand_flops(models.create("alexnet")), rel=1e-6)
    for r in mo:
        assert r["tflop_per_s"] == pytest.approx(r["img_per_s"] * r["gflop_per_img"] / 1e3, rel=0.01, abs=0.05)

    md = subprocess.run([sys.executable, str(SCRIPT), "--markdown", str(files[0])], capture_output=True, text=True,
                        env=env, timeout=60)
    assert md.returncode == 0, md.stderr
    table_rows = [line for line in md.stdout.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert len(table_rows) == len(rows)
    assert "| alexnet | lrn=none | eager |" in md.stdout


@pytest.mark.slow
def test_gpu_run_sh_writes_the_preflight_the_plan_the_results_and_the_tables(tmp_path: Path) -> None:
    # The orchestration only, on the CPU: a deadline of 1 s skips every row (recorded as skipped).
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "PYTHON": sys.executable,
           "GPU_RUN_ARGS": f"--device cpu --tiny --only model-only --deadline 1 --work-dir {tmp_path / 'work'}"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_run.sh"), str(out)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ok    compiled step" in (out / "preflight.txt").read_text()
    log = (out / "gpu.log").read_text()
    assert "plan: " in log and "1. model-only alexnet compile" in log
    (result,) = out.glob("gpu-cpu-*.json")
    rows = json.loads(result.read_text())["rows"]
    assert rows and all(r.get("skipped", "").startswith("deadline") for r in rows)
    assert "| alexnet |" in result.with_suffix(".md").read_text()
    assert (out / "summary.txt").read_text().startswith("preflight exit 0, measurement exit 0")
