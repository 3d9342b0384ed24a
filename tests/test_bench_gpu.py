"""benchmarks/gpu.py at toy scale on the CPU, and the tuned step it times (alexnet.engine.fast_step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet import models
from alexnet.data.augment import Augment
from alexnet.engine.fast_step import FastStep, FusedPaperSGD, TwoTowerConv2d, two_tower_convs
from alexnet.engine.optim import PaperSGD

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"


def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, groups=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 6 * 6, 5))


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    a, b = _small_net(), _small_net()
    b.load_state_dict(a.state_dict())
    return a, b


def _grads(m: nn.Module, x: torch.Tensor) -> None:
    m.zero_grad(set_to_none=True)
    m(x).square().mean().backward()


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_update_is_the_papers_rule(compiled: bool) -> None:
    """FusedPaperSGD = PaperSGD (§5, lr inside the velocity), also after the learning rate changes."""
    ref_m, m = _pair()
    groups = lambda net: [{"params": [p for p in net.parameters() if p.ndim > 1]},  # noqa: E731
                          {"params": [p for p in net.parameters() if p.ndim == 1], "weight_decay": 0.0}]
    ref, opt = PaperSGD(groups(ref_m), lr=0.1), PaperSGD(groups(m), lr=0.1)
    # backend "eager": dynamo traces the update in one graph (fullgraph) without Inductor's compile time.
    fused = FusedPaperSGD(opt, compile=compiled, backend="eager")
    gen = torch.Generator().manual_seed(1)
    for i in range(4):
        x = torch.randn(4, 3, 8, 8, generator=gen)
        _grads(ref_m, x)
        _grads(m, x)
        ref.step()
        fused.step()
        for o in (ref, opt):
            for g in o.param_groups:
                g["lr"] = 0.1 / (i + 2)  # the velocity keeps the old eps (§5's rule)
    for p, q in zip(ref_m.parameters(), m.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt.state[q]["velocity"], ref.state[p]["velocity"], rtol=1e-6, atol=1e-7)
    assert set(opt.state_dict()["state"][0]) == {"velocity"}  # checkpoints keep PaperSGD's layout


def _augment(size: int = 10, crop: int = 8) -> Augment:
    gen = torch.Generator().manual_seed(2)
    mean = torch.rand(3, size, size, generator=gen) * 255
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen))
    return Augment(mean, torch.tensor([0.2, 0.02, 0.005]), q, crop, input_norm="mean_image", seed=3)


def test_fast_step_equals_the_plain_step() -> None:
    """One FastStep (fp32, eager) is augmentation → model → cross-entropy → PaperSGD, nothing else."""
    ref_m, m = _pair()
    ref_opt, opt = PaperSGD(ref_m.parameters(), lr=0.05), PaperSGD(m.parameters(), lr=0.05)
    aug = _augment()
    step = FastStep(m, opt, aug, "cpu", amp="none", channels_last=False)
    assert step.fused is not None
    gen = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (6, 3, 10, 10), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 5, (6,), generator=gen)
    indices = torch.arange(10, 16)
    for epoch in range(2):
        loss, hits = step(images, labels, indices, epoch)
        x = aug.train(images, indices, epoch)
        logits = ref_m(x)
        ref_loss = F.cross_entropy(logits, labels)
        ref_opt.zero_grad(set_to_none=True)
        ref_loss.backward()
        ref_opt.step()
        torch.testing.assert_close(loss, ref_loss.detach())
        assert int(hits) == int((logits.argmax(1) == labels).sum())
    # The fused update rounds p·(lr·wd) where PaperSGD rounds wd·lr first: last-bit differences.
    for p, q in zip(ref_m.parameters(), m.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_fast_step_bf16_channels_last_compiled_runs() -> None:
    """The GPU configuration's code path (bf16 input from the augmentation, channels_last, compiled
    forward + fused update) on the CPU with dynamo's eager backend: finite loss, weights move."""
    torch.manual_seed(0)
    m = _small_net().to(memory_format=torch.channels_last)
    opt = PaperSGD(m.parameters(), lr=0.01)
    step = FastStep(m, opt, _augment(), "cpu", amp="bf16", channels_last=True, compile=True, compile_backend="eager")
    x = step.prepare(torch.randint(0, 256, (4, 3, 10, 10), dtype=torch.uint8), torch.arange(4), 0)
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in m.parameters()]
    loss, hits = step(torch.randint(0, 256, (4, 3, 10, 10), dtype=torch.uint8), torch.tensor([0, 1, 2, 3]),
                      torch.arange(4), 0)
    assert torch.isfinite(loss) and 0 <= int(hits) <= 4
    assert all(not torch.equal(a, p) for a, p in zip(before, m.parameters()))
    with pytest.raises(ValueError, match="cuda_graphs"):
        FastStep(m, opt, None, "cpu", compile=False, cuda_graphs=True)


def test_two_tower_convs_same_function_and_state_dict() -> None:
    ref, m = _pair()
    two_tower_convs(m)
    assert isinstance(m[2], TwoTowerConv2d) and not isinstance(m[0], TwoTowerConv2d)
    assert m.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(m(x), ref(x))
    _grads(ref, x)
    _grads(m, x)
    for p, q in zip(ref.parameters(), m.parameters()):
        torch.testing.assert_close(q.grad, p.grad)
    paper = two_tower_convs(models.create("alexnet", num_classes=10))
    assert sum(isinstance(c, TwoTowerConv2d) for c in paper.modules()) == 3  # §3.2: conv2, conv4, conv5


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
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out),
                           "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=180)
    wall = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert wall < 60, f"the tiny run took {wall:.0f} s"
    files = list(out.glob("gpu-cpu-*.json"))
    assert len(files) == 1
    result = json.loads(files[0].read_text())
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
    assert any(r["variant"] == "no augmentation (ANCHORS' setting)" for r in mo)
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
