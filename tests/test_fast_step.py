"""The training step (alexnet.engine.fast_step.FastStep), the paper's update as one fused kernel per
parameter (alexnet.engine.optim.FusedPaperSGD) and the two towers as two convolutions
(alexnet.models.layers.TwoTowerConv2d)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet import models
from alexnet.data.augment import Augment
from alexnet.engine.fast_step import FastStep
from alexnet.engine.optim import FusedPaperSGD, PaperSGD
from alexnet.models.layers import TwoTowerConv2d, two_tower_convs


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
