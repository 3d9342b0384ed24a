"""§3.2's two-device split of the paper's network equals the single-device grouped model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alexnet import models
from alexnet.cli import main
from alexnet.data.sources import synthetic
from alexnet.engine import checkpoint as ckpt
from alexnet.engine.model_parallel import ModelParallelAlexNet


def _pair(**opts: object) -> tuple[torch.nn.Module, ModelParallelAlexNet]:
    torch.manual_seed(0)
    grouped = models.create("alexnet", 10, **opts)
    return grouped, ModelParallelAlexNet(grouped, ["cpu", "cpu"])


def test_forward_and_backward_equal_the_grouped_model_at_224() -> None:
    grouped, mp = _pair(dropout=0.0)
    # the split: each tower holds half of every layer, fc8 whole
    assert mp.features[0][0].weight.shape == (48, 3, 11, 11)  # conv1: 48 of 96 kernels, the whole image
    assert mp.features[0][4].weight.shape == (128, 48, 5, 5)  # conv2: own tower's 48 maps
    conv3 = [i for i, k in enumerate(mp.feature_kinds) if k == "cross"]
    assert len(conv3) == 1 and mp.features[1][conv3[0]].weight.shape == (192, 256, 3, 3)  # conv3 reads both
    assert mp.classifier[0][0].weight.shape == (2048, 9216) and mp.head.weight.shape == (10, 4096)
    assert sum(p.numel() for p in mp.parameters()) == sum(p.numel() for p in grouped.parameters())

    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224) * 60  # the scale of mean-subtracted 0–255 pixels
    y_ref = grouped(x)
    y = mp(x)
    assert torch.allclose(y, y_ref, rtol=1e-4, atol=1e-5 * float(y_ref.detach().abs().max()))
    (y_ref * torch.arange(10.0)).sum().backward()
    (y * torch.arange(10.0)).sum().backward()
    g = mp.to_grouped({n: p.grad for n, p in mp.named_parameters()})
    for name, p in grouped.named_parameters():
        scale = float(p.grad.abs().max()) + 1e-12
        assert float((g[name] - p.grad).abs().max()) <= 1e-4 * scale, name


def test_state_dict_round_trip_and_eval_with_dropout() -> None:
    grouped, mp = _pair()  # the paper's dropout 0.5: eval mode switches it off on both
    sd = mp.grouped_state_dict()
    assert sd.keys() == grouped.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in grouped.state_dict().items())
    other = models.create("alexnet", 10)
    mp.load_grouped_state_dict(other.state_dict())
    assert all(torch.equal(mp.grouped_state_dict()[k], v) for k, v in other.state_dict().items())
    with pytest.raises(RuntimeError, match="missing key"):
        mp.load_grouped_state_dict({k: v for k, v in other.state_dict().items() if "classifier" not in k})
    other.eval(), mp.eval()
    x = torch.randn(1, 3, 224, 224) * 60
    with torch.no_grad():
        assert torch.allclose(mp(x), other(x), rtol=1e-4, atol=1e-6)


def test_refuses_models_without_two_towers() -> None:
    with pytest.raises(ValueError, match="towers=2"):
        ModelParallelAlexNet(models.create("alexnet", 10, towers=1), ["cpu", "cpu"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 devices"):
        ModelParallelAlexNet(models.create("alexnet", 10), ["cpu"])  # type: ignore[arg-type]


def test_training_with_model_parallel_matches_the_grouped_model(tmp_path: Path) -> None:
    """A slim paper network (same layers, fewer kernels) at 224: two steps with --model-parallel 2
    on two CPU "devices" end where the single-device grouped model ends."""
    ds = synthetic.build(tmp_path / "ds", size=256, train_per_class=1, val_per_class=1)
    common = ["--data", str(ds), "--model", "alexnet", "--epochs", "1", "--batch-size", "4", "--workers", "0",
              "--no-progress", "--device", "cpu", "--lr", "0.01", "--set", "max_steps_per_epoch=2",
              "--model-opt", "widths=[8,16,16,16,16]", "--model-opt", "hidden=32", "--model-opt", "dropout=0.0"]
    assert main(["train", "--out", str(tmp_path / "single"), *common]) == 0
    assert main(["train", "--out", str(tmp_path / "mp"), "--model-parallel", "2", *common]) == 0
    a, _ = ckpt.load_weights(tmp_path / "single" / ckpt.WEIGHTS)  # the state_dict, without the data statistics
    b, meta = ckpt.load_weights(tmp_path / "mp" / ckpt.WEIGHTS)
    assert meta["model"] == "alexnet" and a.keys() == b.keys()  # weights in the grouped layout
    for k in a:
        assert float((a[k] - b[k]).abs().max()) <= 1e-5 * (1 + float(a[k].abs().max())), k
    assert any(not torch.equal(a[k], models.create("alexnet", 10, widths=[8, 16, 16, 16, 16], hidden=32).state_dict()[k])
               for k in a)  # and they did train
