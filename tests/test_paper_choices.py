"""The choices where the code departs from (or must decide how to read) the paper, each reachable
from a recipe or the command line: weight decay of the biases, stall detection in the paper's
recipe, and LRN at the tower boundary (``lrn_halo``)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from alexnet import config as config_mod
from alexnet import models
from alexnet.cli import build_parser
from alexnet.commands.train import config_from_args
from alexnet.engine import train as engine
from alexnet.engine.model_parallel import ModelParallelAlexNet
from alexnet.engine.optim import base_lr, build_optimizer
from alexnet.models.layers import LocalResponseNorm, lrn_reference


def cli_config(*argv: str) -> config_mod.TrainConfig:
    """The config ``alexnet train ARGV`` would run with."""
    return config_from_args(build_parser().parse_args(["train", "--out", "unused", *argv]))


# -- weight decay of the biases (§5) ---------------------------------------------------------------


def _one_step_without_gradient(cfg: config_mod.TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero-gradient step of the paper's rule: only weight decay moves a parameter."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    with torch.no_grad():
        net.bias.fill_(1.0)
    w0, b0 = net.weight.detach().clone(), net.bias.detach().clone()
    opt = build_optimizer(cfg, net, base_lr(cfg))
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return net.weight.detach() / w0, net.bias.detach() / b0


def test_biases_are_not_decayed_by_default_as_cuda_convnet() -> None:
    cfg = cli_config("--model", "alexnet")
    assert cfg.weight_decay == 5e-4 and cfg.weight_decay_biases is False
    w_ratio, b_ratio = _one_step_without_gradient(cfg)
    assert torch.allclose(w_ratio, torch.full_like(w_ratio, 1 - 5e-4 * 0.01))  # v = -0.0005 eps w
    assert torch.equal(b_ratio, torch.ones_like(b_ratio))


def test_biases_decay_as_the_rule_reads_when_asked_from_the_command_line() -> None:
    cfg = cli_config("--model", "alexnet", "--set", "weight_decay_biases=true")
    assert cfg.weight_decay_biases is True
    _, b_ratio = _one_step_without_gradient(cfg)
    assert torch.allclose(b_ratio, torch.full_like(b_ratio, 1 - 5e-4 * 0.01))


# -- stall detection in the paper's recipe ---------------------------------------------------------


def test_the_paper_recipe_warns_when_the_loss_stays_at_chance() -> None:
    cfg = config_mod.resolve("paper", {})
    assert cfg.stall_steps > 0
    logged: list[str] = []
    ctx = SimpleNamespace(cfg=cfg, train_ds=SimpleNamespace(num_classes=1000), log=logged.append)
    stall_count = 0
    chance = math.log(1000)
    for step in range(1, cfg.stall_steps):
        stall_count = engine.check_loss(ctx, chance + 0.001, step, 0, stall_count)  # type: ignore[arg-type]
    assert logged == []
    stall_count = engine.check_loss(ctx, chance, cfg.stall_steps, 0, stall_count)  # type: ignore[arg-type]
    assert len(logged) == 1 and "the loss has stayed at chance level (ln 1000" in logged[0]
    stall_count = engine.check_loss(ctx, chance - 1.0, cfg.stall_steps + 1, 0, stall_count)  # type: ignore[arg-type]  # learning again
    assert stall_count == 0


# -- LRN at the tower boundary ---------------------------------------------------------------------


def test_grouped_lrn_normalises_each_tower_alone() -> None:
    x = torch.randn(2, 8, 3, 3) * 20
    y = LocalResponseNorm(groups=2)(x)
    ref = torch.cat([lrn_reference(x[:, :4]), lrn_reference(x[:, 4:])], 1)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6)
    whole = LocalResponseNorm()(x)
    assert not torch.allclose(y[:, 2:6], whole[:, 2:6])  # the maps beside the boundary differ
    assert torch.allclose(y[:, :2], whole[:, :2]) and torch.allclose(y[:, 6:], whole[:, 6:])


def test_lrn_halo_is_a_model_option_reachable_from_the_command_line() -> None:
    cfg = cli_config("--model", "alexnet", "--model-opt", "lrn_halo=false")
    assert cfg.model_options == {"lrn_halo": False}
    net = engine.build_model(cfg, 10, torch.device("cpu"))
    lrns = [m for m in net.features if isinstance(m, LocalResponseNorm)]
    assert len(lrns) == 2 and all(m.groups == 2 for m in lrns)
    default = engine.build_model(cli_config("--model", "alexnet"), 10, torch.device("cpu"))
    assert all(m.groups == 1 for m in default.features if isinstance(m, LocalResponseNorm))


def test_without_halo_the_grouped_model_equals_two_separate_towers() -> None:
    """lrn_halo=False on one device computes what the paper's two GPUs computed: the model-parallel
    split without any LRN exchange; with the halo (default) LRN crosses the boundary."""
    torch.manual_seed(0)
    opts = dict(widths=(8, 16, 16, 16, 16), hidden=32, dropout=0.0, init="torch")
    grouped = models.create("alexnet", 10, lrn_halo=False, **opts).eval()
    split = ModelParallelAlexNet(grouped, ["cpu", "cpu"]).eval()  # type: ignore[arg-type]
    assert split.lrn_halo is False
    x = torch.randn(2, 3, 224, 224) * 60
    with torch.no_grad():
        y = grouped(x)
        assert torch.allclose(split(x), y, rtol=1e-4, atol=1e-5 * float(y.abs().max()))
        halo = models.create("alexnet", 10, **opts).eval()
        halo.load_state_dict(grouped.state_dict())  # same weights, LRN across the boundary
        a, b = grouped.features[:3](x), halo.features[:3](x)  # conv1 -> ReLU -> LRN: 4 + 4 maps
        assert torch.allclose(a[:, [0, 1, 6, 7]], b[:, [0, 1, 6, 7]])  # maps 2 or more from the boundary agree
        assert float((a[:, 2:6] - b[:, 2:6]).abs().max()) > 1e-3 * float(b.abs().max())  # those beside it do not


@pytest.mark.parametrize("opts, expect", [({"towers": 1}, "towers=1"), ({"lrn": "none"}, "lrn='none'")])
def test_lrn_halo_off_is_refused_where_it_cannot_take_effect(opts: dict, expect: str) -> None:
    with pytest.raises(ValueError, match=f"lrn_halo=False has no effect with {expect}"):
        models.create("alexnet", 10, lrn_halo=False, **opts)
