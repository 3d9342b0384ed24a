"""LARS (You, Gitman & Ginsburg 2017, Algorithm 1): the optimizer against its formula in float64,
the parameters it adapts, the poly schedule, its state across a save and load, and its config."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from alexnet.config import TrainConfig, resolve
from alexnet.engine.checks import check_against_data
from alexnet.engine.optim import LARS, Schedule, build_optimizer, set_lr
from alexnet.errors import UserError

ETA, WD, MOM = 0.001, 5e-4, 0.9


def reference(w0: list[np.ndarray], grads: list[list[np.ndarray]], lrs: list[float], trust: list[bool],
              wds: list[float]) -> list[np.ndarray]:
    """Algorithm 1 written out in float64 NumPy: for each tensor, lambda = eta ||w|| / (||g|| + beta ||w||);
    v <- m v + gamma lambda (g + beta w); w <- w - v."""
    ws = [w.copy() for w in w0]
    vs = [np.zeros_like(w) for w in w0]
    for step_grads, lr in zip(grads, lrs):
        for i, g in enumerate(step_grads):
            w, beta = ws[i], wds[i]
            lam = ETA * np.linalg.norm(w) / (np.linalg.norm(g) + beta * np.linalg.norm(w)) if trust[i] else 1.0
            vs[i] = MOM * vs[i] + lr * lam * (g + beta * w)
            ws[i] = w - vs[i]
    return ws


def test_lars_follows_algorithm_1_in_float64_over_steps_and_a_rate_change() -> None:
    rng = np.random.default_rng(0)
    w0 = [rng.normal(0, 0.01, (6, 5)), rng.normal(0, 0.01, (4, 3, 2)), np.full(6, 1.0)]
    grads = [[rng.normal(0, s, w.shape) for w, s in zip(w0, (1e-3, 5e-2, 1e-2))] for _ in range(6)]
    lrs = [0.5, 1.0, 1.5, 2.0, 2.0, 0.2]  # a warm-up, then a decay: the global rate changes every step
    params = [nn.Parameter(torch.tensor(w, dtype=torch.float64)) for w in w0]
    opt = LARS([{"params": params[:2], "weight_decay": WD, "trust": True},
                {"params": params[2:], "weight_decay": 0.0, "trust": False}],
               lr=lrs[0], momentum=MOM, trust_coefficient=ETA)
    want = reference(w0, grads, lrs, trust=[True, True, False], wds=[WD, WD, 0.0])
    for step_grads, lr in zip(grads, lrs):
        set_lr(opt, lr)
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    for p, w in zip(params, want):
        np.testing.assert_allclose(p.detach().numpy(), w, rtol=0, atol=1e-15)
    assert not np.allclose(params[0].detach().numpy(), w0[0], atol=1e-4)  # the weights moved


def test_the_step_of_a_weight_tensor_is_gamma_eta_norm_w_whatever_the_gradient_scale() -> None:
    # Without momentum or decay the first step is gamma * eta * ||w|| * g / ||g||: its size is fixed
    # by the weights, and a gradient 10^6 times larger takes the same step.
    torch.manual_seed(0)
    w0 = torch.randn(8, 4, dtype=torch.float64)
    g = torch.randn(8, 4, dtype=torch.float64)
    for scale in (1e-3, 1.0, 1e3):
        w = nn.Parameter(w0.clone())
        opt = LARS([w], lr=2.0, momentum=0.0, weight_decay=0.0, trust_coefficient=ETA)
        w.grad = g * scale
        opt.step()
        step = w.detach() - w0
        assert math.isclose(float(step.norm()), 2.0 * ETA * float(w0.norm()), rel_tol=1e-12)
        assert torch.allclose(step, -2.0 * ETA * w0.norm() * g / g.norm(), rtol=0, atol=1e-15)


def test_a_zero_tensor_takes_the_global_rate_instead_of_staying_at_zero() -> None:
    w = nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))
    opt = LARS([w], lr=0.1, momentum=MOM, weight_decay=WD, trust_coefficient=ETA)
    g = torch.arange(6, dtype=torch.float64).reshape(3, 2)
    w.grad = g.clone()
    opt.step()
    assert torch.equal(w.detach(), -0.1 * g)  # lambda = 1 where ||w|| = 0


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize("decay_biases", [False, True])
def test_build_optimizer_adapts_weight_tensors_and_leaves_biases_to_the_global_rate(decay_biases: bool) -> None:
    m = _model()
    cfg = TrainConfig(optimizer="lars", lars_eta=0.002, weight_decay=WD, weight_decay_biases=decay_biases, momentum=0.8)
    opt = build_optimizer(cfg, m, lr=3.0)
    assert isinstance(opt, LARS)
    weights, biases = opt.param_groups
    assert [p.ndim for p in weights["params"]] == [4, 2] and weights["trust"] and weights["weight_decay"] == WD
    assert [p.ndim for p in biases["params"]] == [1, 1] and not biases["trust"]
    assert biases["weight_decay"] == (WD if decay_biases else 0.0)
    assert {g["trust_coefficient"] for g in opt.param_groups} == {0.002}
    assert {g["lr"] for g in opt.param_groups} == {3.0} and {g["momentum"] for g in opt.param_groups} == {0.8}


def test_lars_state_saved_and_loaded_continues_bit_for_bit() -> None:
    def steps(opt: torch.optim.Optimizer, m: nn.Module, seeds: range) -> None:
        for s in seeds:
            torch.manual_seed(s)
            opt.zero_grad()
            m(torch.randn(5, 3, 3, 3)).square().sum().backward()
            opt.step()

    torch.manual_seed(1)
    a = _model()
    opt_a = build_optimizer(TrainConfig(optimizer="lars"), a, lr=1.0)
    steps(opt_a, a, range(3))
    b = _model()
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(TrainConfig(optimizer="lars"), b, lr=1.0)
    saved = io.BytesIO()
    torch.save(opt_a.state_dict(), saved)  # through bytes, as a checkpoint (a live state_dict shares its tensors)
    saved.seek(0)
    opt_b.load_state_dict(torch.load(saved, weights_only=True))
    steps(opt_a, a, range(3, 6))
    steps(opt_b, b, range(3, 6))
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


def test_poly_schedule_is_algorithm_1s_after_the_warm_up() -> None:
    cfg = TrainConfig(lr=2.0, schedule="poly", epochs=10, warmup_epochs=2)
    s = Schedule(cfg, steps_per_epoch=5)
    assert s.lr_at(0) == 2.0 * 1 / 10 and s.lr_at(9) == 2.0  # linear warm-up over 10 steps
    assert s.lr_at(10) == 2.0
    assert math.isclose(s.lr_at(30), 2.0 * (1 - 4 / 8) ** 2)  # epoch 6: t = (6 - 2) / 8
    assert s.lr_at(50) == 0.0


def test_config_accepts_lars_and_refuses_a_bad_trust_coefficient() -> None:
    cfg = resolve("fast", {"optimizer": "lars", "lars_eta": 0.002, "schedule": "poly"}, cuda=lambda d: False)
    assert (cfg.optimizer, cfg.lars_eta, cfg.schedule) == ("lars", 0.002, "poly")
    for bad in (0, -0.001, 2.0, "x"):
        with pytest.raises(UserError, match="lars_eta="):
            TrainConfig(lars_eta=bad).validate()  # type: ignore[arg-type]


def test_a_trust_coefficient_without_lars_is_said_to_have_no_effect() -> None:
    def warnings(**kw: object) -> list[str]:
        cfg = TrainConfig(model="alexnet-cifar", pca_std=0.0, random_crop=False, **kw)  # type: ignore[arg-type]
        return check_against_data(cfg, image_size=(32, 32), input_size=32)
    assert any("lars_eta=0.01 has no effect with optimizer=nesterov" in w for w in warnings(optimizer="nesterov", lars_eta=0.01))
    assert not any("lars_eta" in w for w in warnings(optimizer="lars", lars_eta=0.01))
