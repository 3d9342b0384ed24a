"""Model registry: ``create(name, num_classes, **options)``, ``names()`` and ``check_name(name)``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from alexnet.errors import UserError
from alexnet.models.alexnet import AlexNet, alexnet, alexnet_owt
from alexnet.models.layers import LocalResponseNorm
from alexnet.models.small import CifarNet, LeNet5


@dataclass(frozen=True)
class ModelInfo:
    """One model of the registry: what :func:`create` builds and what the data must give it.

    Attributes:
        name: The name ``--model`` and :func:`create` take (``alexnet``, ``alexnet-owt``, ...).
        builder: ``builder(num_classes, **options)`` returns the network.
        cls: The network's class (its keyword options are the model options).
        input_size: The side of the square crops the network reads (224, or 32 for the small nets).
        input_norm: How the network expects its input (see the comment below).
        summary: One line for ``--help`` and the documentation.
    """

    name: str
    builder: Callable[..., nn.Module]
    cls: type
    input_size: int
    # How the network expects its input (alexnet.data.augment.INPUT_NORMS): "mean_image" (§2: raw
    # 0–255 RGB minus the training set's per-pixel mean), "mean_image_std" (the same at unit
    # scale, for the small nets) or "mean_std" (torchvision's per-channel normalisation).
    input_norm: str
    summary: str


_REGISTRY: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("alexnet", alexnet, AlexNet, 224, "mean_image", "the 2012 paper's two-tower network (60,965,224 params)"),
        ModelInfo("alexnet-owt", alexnet_owt, AlexNet, 224, "mean_std", "one-weird-trick net = torchvision.models.alexnet"),
        ModelInfo("alexnet-cifar", CifarNet, CifarNet, 32, "mean_image_std", "a 3-conv net of the authors' CIFAR-10 family (the layers of cuda-convnet's 18% net; He init, the paper's LRN, max-pools: not its configuration)"),
        ModelInfo("lenet5", LeNet5, LeNet5, 32, "mean_image_std", "LeNet-5 (LeCun 1998), the pre-2012 baseline"),
    )
}


def names() -> list[str]:
    return list(_REGISTRY)


def _unknown(name: str) -> str:
    return f"unknown model {name!r}; accepted: {', '.join(names())}"


def check_name(name: str) -> None:
    """The one check that a model name (``--model``, a recipe's ``model``) is known: a
    :class:`~alexnet.errors.UserError` naming the known ones otherwise."""
    if name not in _REGISTRY:
        raise UserError(_unknown(name))


def info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:  # a ValueError for library callers (torch.hub, create); commands use check_name
        raise ValueError(_unknown(name)) from None


def options(name: str) -> list[str]:
    """The keyword options ``create`` accepts for ``name``."""
    sig = inspect.signature(info(name).cls.__init__)
    return [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]


def input_norm(name: str, model_options: dict[str, Any] | None = None) -> str:
    """How model ``name`` built with ``model_options`` expects its input: the ``input_norm``
    option where the model takes one and it is set, else the registry's."""
    chosen = (model_options or {}).get("input_norm")
    return chosen if chosen and "input_norm" in options(name) else info(name).input_norm


def input_size(name: str, model_options: dict[str, Any] | None = None) -> int:
    """The crop size model ``name`` built with ``model_options`` takes: the ``input_size`` option
    where the model takes one and it is set (Caffe's AlexNet: 227), else the registry's."""
    chosen = (model_options or {}).get("input_size")
    return int(chosen) if chosen and "input_size" in options(name) else info(name).input_size


def _check_types(name: str, opts: dict[str, Any]) -> None:
    """Each option of the type of its default (a bool for a bool, a number for a float, an integer
    for an int, a string for a string), so that ``dropout=abc`` is one clear line, not an error
    from deep inside the constructor."""
    sig = inspect.signature(info(name).cls.__init__)
    defaults = {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}
    for key, value in opts.items():
        default = defaults.get(key)
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif isinstance(default, str):
            ok, want = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:55] + " ..."
            raise ValueError(f"option {key}={shown} of model {name!r}: expected {want} (default {default!r})")


def create(name: str, num_classes: int = 1000, **opts: Any) -> nn.Module:
    """Build a model of the registry by name, with the paper's choices as keyword options.

    Args:
        name: One of :func:`names`: ``alexnet`` (the 2012 network, §3), ``alexnet-owt``
            (torchvision's one-weird-trick net), ``alexnet-cifar`` or ``lenet5``.
        num_classes: Output units of the last layer.
        **opts: Model options (``--model-opt K=V`` on the command line), e.g. ``lrn="none"``,
            ``towers=1``, ``dropout=0.3``, ``activation="tanh"``; :func:`options` lists those a model
            accepts.

    Returns:
        The network, a ``torch.nn.Module`` with ``features`` and ``classifier`` Sequentials (as
        torchvision's AlexNet) and an ``input_size`` attribute.

    Raises:
        ValueError: An unknown name, an option the model does not take, or a value of the wrong type,
            naming what is accepted.

    Example:
        ```python
        import alexnet.models as M
        net = M.create("alexnet", num_classes=1000)            # the paper
        abl = M.create("alexnet", lrn="none", towers=1)         # an ablation
        ```
    """
    m = info(name)
    accepted = options(name)
    bad = sorted(set(opts) - set(accepted))
    if bad:
        raise ValueError(f"option {bad[0]!r} does not apply to model {name!r}; accepted: {', '.join(accepted)}")
    _check_types(name, opts)
    model = m.builder(num_classes, **opts)
    model.input_size = input_size(name, opts)  # type: ignore[assignment]
    return model


__all__ = ["AlexNet", "CifarNet", "LeNet5", "LocalResponseNorm", "ModelInfo", "check_name", "create", "info", "input_norm", "input_size", "names", "options"]
