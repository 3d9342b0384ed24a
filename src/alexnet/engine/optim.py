"""Optimisers and learning-rate schedules.

§5's update rule keeps the learning rate *inside* the velocity:
    v <- 0.9 v - 0.0005 eps w - eps dL/dw ;  w <- w + v
``torch.optim.SGD`` keeps it outside (v <- mu v + g + lambda w; w <- w - eps v). The two agree
while eps is fixed; after eps changes, the paper's velocity still carries the old eps.

:class:`LARS` (You, Gitman & Ginsburg 2017, for global batches beyond the linear scaling rule's
reach) scales each weight tensor's step by its own trust ratio, and keeps the rate inside the
velocity as §5 does.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from alexnet.config import TrainConfig


class PaperSGD(Optimizer):
    """The update rule of §5, exactly, with a foreach (multi-tensor) implementation."""

    def __init__(self, params: Iterable[Any], lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def velocities(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each parameter's velocity ``v`` (§5), created as zeros on first use."""
        vels = []
        for p in params:
            st = self.state[p]
            if "velocity" not in st:
                st["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            vels.append(st["velocity"])
        return vels

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for params in _by_kind(p for p in group["params"] if p.grad is not None):
                grads = [p.grad for p in params]
                vels = self.velocities(params)
                torch._foreach_mul_(vels, mu)  # 0.9 v
                if wd:
                    torch._foreach_add_(vels, params, alpha=-wd * lr)  # - 0.0005 eps w
                torch._foreach_add_(vels, grads, alpha=-lr)  # - eps dL/dw
                torch._foreach_add_(params, vels)  # w <- w + v
        return loss


def _by_kind(params: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``params`` split into plain tensors and DTensor shards (``parallel=owt``'s FC layers), in
    order: one foreach call may not mix the two."""
    kinds: dict[type, list[torch.Tensor]] = {}
    for p in params:
        kinds.setdefault(type(p), []).append(p)
    return list(kinds.values())


# -- the paper's update rule (§5), written per parameter so that Inductor fuses each one into a kernel --


def paper_sgd_update(
    params: list[torch.Tensor], grads: list[torch.Tensor], vels: list[torch.Tensor], lr: torch.Tensor,
    momentum: float, weight_decay: float,
) -> None:
    """``v <- momentum v - weight_decay lr w - lr g ; w <- w + v`` in place, for each parameter.

    The same operations, in the same order, as :meth:`PaperSGD.step` (which uses foreach ops);
    ``lr`` is a 0-d tensor on the parameters' device."""
    for p, g, v in zip(params, grads, vels):
        v.mul_(momentum)  # 0.9 v
        if weight_decay:
            v.add_(p * (lr * -weight_decay))  # - 0.0005 eps w
        v.add_(g * -lr)  # - eps dL/dw
        p.add_(v)  # w <- w + v


class FusedPaperSGD:
    """Runs a :class:`PaperSGD`'s step with :func:`paper_sgd_update` (compiled when ``compile``).

    Reads ``lr``/``momentum``/``weight_decay`` from the optimizer's param groups at every call (so
    ``set_lr`` and schedules keep working) and uses the optimizer's own velocities
    (:meth:`PaperSGD.velocities`), so checkpoints are the same either way."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, compile: bool = False, backend: str = "inductor") -> None:
        self.optimizer = optimizer
        self.update: Callable[..., None] = (
            torch.compile(paper_sgd_update, backend=backend, fullgraph=True) if compile else paper_sgd_update
        )
        self._lr: dict[tuple[int, torch.device], tuple[float, torch.Tensor]] = {}

    def _lr_tensor(self, gi: int, lr: float, device: torch.device) -> torch.Tensor:
        key = (gi, device)
        cached = self._lr.get(key)
        if cached is None:
            t = torch.tensor(lr, dtype=torch.float32, device=device)
            self._lr[key] = (lr, t)
            return t
        old, t = cached
        if old != lr:
            t.fill_(lr)  # a kernel on the stream: no host-device synchronisation
            self._lr[key] = (lr, t)
        return t

    @torch.no_grad()
    def step(self) -> None:
        opt = self.optimizer
        for gi, group in enumerate(opt.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            by_device: dict[torch.device, list[torch.Tensor]] = {}
            for p in params:  # one call per device (the two towers of model_parallel=2 live on two)
                by_device.setdefault(p.device, []).append(p)
            for device, ps in by_device.items():
                vels = opt.velocities(ps)  # type: ignore[attr-defined]  # a PaperSGD's own state
                lr = self._lr_tensor(gi, float(group["lr"]), device)
                self.update(ps, [p.grad for p in ps], vels, lr, float(group["momentum"]), float(group["weight_decay"]))


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling, Algorithm 1 of You, Gitman & Ginsburg (2017), for each
    parameter tensor w with gradient g (a "layer" is one weight tensor)::

        lambda <- eta ||w|| / (||g|| + beta ||w||)        the local rate (eta: trust coefficient)
        v      <- m v + gamma lambda (g + beta w)         gamma: the global rate (the group's lr)
        w      <- w - v

    Weight decay beta is inside both the ratio and the step; the global rate is inside the velocity,
    as in §5's rule, so a schedule's change of gamma does not rescale the steps already taken.
    The step of a weight tensor is about gamma * eta * ||w|| whatever the scale of its gradient.
    A group with ``trust=False`` takes lambda = 1 (momentum SGD at the global rate):
    :func:`build_optimizer` puts biases there. Where ||w|| = 0 (a tensor initialised to zeros,
    whose ratio would keep it at zero for ever) or the denominator is 0, lambda = 1."""

    def __init__(self, params: Iterable[Any], lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 5e-4,
                 trust_coefficient: float = 0.001, trust: bool = True) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if trust_coefficient <= 0:
            raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, trust=trust))

    @staticmethod
    def local_rate(w: torch.Tensor, g: torch.Tensor, trust_coefficient: float, weight_decay: float) -> torch.Tensor:
        """``eta ||w|| / (||g|| + beta ||w||)`` as a 0-d tensor (no host-device synchronisation), 1 where undefined."""
        w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
        denom = g_norm + weight_decay * w_norm
        ok = (w_norm > 0) & (denom > 0)
        return torch.where(ok, trust_coefficient * w_norm / torch.where(ok, denom, 1.0), 1.0)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                st = self.state[p]
                if "velocity" not in st:
                    st["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                v = st["velocity"]
                d = g.add(p, alpha=wd) if wd else g  # g + beta w
                v.mul_(mu)  # m v
                if group["trust"]:
                    v.add_(d * (self.local_rate(p, g, group["trust_coefficient"], wd) * lr))  # + gamma lambda (g + beta w)
                else:
                    v.add_(d, alpha=lr)  # + gamma (g + beta w)
                p.sub_(v)  # w <- w - v
        return loss


def param_groups(model: nn.Module, weight_decay: float, decay_biases: bool, *, by_shape: bool = False) -> list[dict[str, Any]]:
    """Weight tensors (ndim > 1) decayed; biases (ndim <= 1) decayed only with ``decay_biases``.
    ``by_shape``: the two kinds in two groups even when both are decayed (LARS adapts only the first)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 or (decay_biases and not by_shape) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": weight_decay if decay_biases else 0.0})
    return groups


def base_lr(cfg: TrainConfig) -> float:
    """The linear scaling rule (Goyal et al. 2017) when ``lr_scaling_batch`` is set."""
    return cfg.lr * cfg.batch_size / cfg.lr_scaling_batch if cfg.lr_scaling_batch > 0 else cfg.lr


def build_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> Optimizer:
    """The optimizer ``cfg`` names at learning rate ``lr`` (the schedule's :attr:`Schedule.base`:
    the schedule sets the rate before every step)."""
    if cfg.optimizer == "lars":
        # Only weight tensors are adapted: a bias starts at 0 or 1 (§5), so its ratio would be
        # undefined or meaningless at first, and it is a few thousand of the 61M parameters. Biases
        # take the global rate with momentum, undecayed unless weight_decay_biases.
        groups = param_groups(model, cfg.weight_decay, cfg.weight_decay_biases, by_shape=True)
        for g in groups:
            g["trust"] = g is groups[0]
        return LARS(groups, lr=lr, momentum=cfg.momentum, trust_coefficient=cfg.lars_eta)
    groups = param_groups(model, cfg.weight_decay, cfg.weight_decay_biases)
    if cfg.optimizer == "paper":
        return PaperSGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov")


class Schedule:
    """Learning rate per step. ``plateau`` (§5): divide by 10 when the validation error has not
    improved for ``plateau_patience`` epochs, at most ``max_lr_drops`` times. ``cosine``, ``poly``
    (LARS's Algorithm 1: ``base (1 - t)^2``, t the fraction of the run after warm-up) and ``step``
    are epoch-driven; all support a linear warm-up. With LARS this is the global rate gamma, which
    each weight tensor's trust ratio then scales."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.base = base_lr(cfg)  # the one place the base rate is computed; the optimizer starts from it
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.drops = 0
        self.best = math.inf
        self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"drops": self.drops, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.drops, self.best, self.bad_epochs = int(d["drops"]), float(d["best"]), int(d["bad_epochs"])

    def lr_at(self, step: int) -> float:
        c = self.cfg
        epoch = step / self.steps_per_epoch
        if c.schedule == "plateau":
            lr = self.base * c.lr_drop_factor**self.drops
        elif c.schedule == "step":
            lr = self.base * c.lr_drop_factor ** sum(epoch >= e for e in c.step_epochs)
        elif c.schedule == "cosine":
            t = min(1.0, max(0.0, (epoch - c.warmup_epochs) / max(1e-9, c.epochs - c.warmup_epochs)))
            lr = c.min_lr + (self.base - c.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        elif c.schedule == "poly":
            t = min(1.0, max(0.0, (epoch - c.warmup_epochs) / max(1e-9, c.epochs - c.warmup_epochs)))
            lr = c.min_lr + (self.base - c.min_lr) * (1 - t) ** 2
        else:
            lr = self.base
        if c.warmup_epochs > 0 and epoch < c.warmup_epochs:
            lr = lr * (step + 1) / (c.warmup_epochs * self.steps_per_epoch)
        return lr

    def end_of_epoch(self, val_err: float | None) -> bool:
        """Feed the epoch's validation error; returns True when the learning rate was dropped."""
        if self.cfg.schedule != "plateau" or val_err is None:
            return False
        if val_err < self.best - self.cfg.plateau_threshold:
            self.best, self.bad_epochs = val_err, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.cfg.plateau_patience and self.drops < self.cfg.max_lr_drops:
            self.drops += 1
            self.bad_epochs = 0
            self.best = min(self.best, val_err)
            return True
        return False


def set_lr(opt: Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
