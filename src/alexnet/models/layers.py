"""Building blocks shared by the models: the paper's response normalisation and activation lookup,
and the check of the constructor options the AlexNet family shares."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# §3.3: k = 2, n = 5, alpha = 1e-4, beta = 0.75.
PAPER_LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}


def lrn_reference(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> torch.Tensor:
    """§3.3 written as a loop over channels; slow, for tests and as the definition.

    b[i] = a[i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2) ** beta
    """
    n_ch = x.shape[1]
    half = size // 2
    out = torch.empty_like(x)
    sq = x * x
    for i in range(n_ch):
        lo, hi = max(0, i - half), min(n_ch - 1, i + half)
        s = sq[:, lo : hi + 1].sum(dim=1)
        out[:, i] = x[:, i] / (k + alpha * s) ** beta
    return out


class LocalResponseNorm(nn.Module):
    """Local response normalisation across channels, with the paper's formula (§3.3).

    Unlike ``torch.nn.LocalResponseNorm`` and Caffe, ``alpha`` is *not* divided by ``size``:
    §3.3: alpha multiplies the plain sum of squares. ``divide_alpha_by_n=True`` gives the
    convention of the authors' released cuda-convnet config (effective alpha = alpha / n).
    ``groups=2``: the channels are two towers normalised separately (the sums never cross from
    one half into the other), as on the paper's two GPUs (§3.2), each of which held half the maps.
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        divide_alpha_by_n: bool = False,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"LRN size must be a positive odd number, got {size}")
        if groups < 1:
            raise ValueError(f"LRN groups must be ≥ 1, got {groups}")
        self.groups = int(groups)
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k
        self.divide_alpha_by_n = divide_alpha_by_n

    @property
    def effective_alpha(self) -> float:
        return self.alpha / self.size if self.divide_alpha_by_n else self.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Imported at the first forward: lrn_fast imports Triton where it is installed (a slow
        # import), which building a model or reading the registry does not need.
        from alexnet.models import lrn_fast

        g = self.groups
        if g == 1:
            return lrn_fast.local_response_norm(x, self.size, self.effective_alpha, self.beta, self.k)
        n, c, h, w = x.shape
        if c % g:
            raise ValueError(f"LRN with groups={g} needs a multiple of {g} channels, got {c}")
        y = lrn_fast.local_response_norm(x.reshape(n * g, c // g, h, w), self.size, self.effective_alpha, self.beta, self.k)
        return y.reshape(n, c, h, w)  # each tower's maps normalised among themselves

    def extra_repr(self) -> str:
        return (f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, divide_alpha_by_n={self.divide_alpha_by_n}"
                + (f", groups={self.groups}" if self.groups != 1 else ""))


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    # LeCun 1998's scaled tanh, f(a) = 1.7159 tanh(2a/3), for LeNet-5.
    "lecun_tanh": lambda: _ScaledTanh(),
}


class _ScaledTanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


def activation_names() -> list[str]:
    return sorted(_ACTIVATIONS)


def make_activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; accepted: {', '.join(activation_names())}") from None


def make_lrn(mode: bool | str, **overrides: float | int) -> nn.Module | None:
    """``mode``: True/"paper" (alpha not divided by n), "released" (alpha / n, the authors' config),
    False/"none" (no normalisation)."""
    if mode is True or mode == "paper":
        return LocalResponseNorm(**{**PAPER_LRN, **overrides})
    if mode == "released":
        return LocalResponseNorm(**{**PAPER_LRN, **overrides}, divide_alpha_by_n=True)
    if mode is False or mode in ("none", "off"):
        return None
    raise ValueError(f"unknown lrn mode {mode!r}; accepted: paper, released, none")


class ScaledAtTestDropout(nn.Dropout):
    """Dropout as §4.2 states it: while training each unit is zeroed with probability ``p`` and the
    kept ones pass unscaled; at test time every unit is kept and its output multiplied by ``1 - p``
    ("we use all the neurons but multiply their outputs by 0.5"). ``torch.nn.Dropout`` is the
    inverted form (kept units × 1/(1 - p) while training, identity at test time): the same test-time
    function of the weights up to a factor 1 - p in the next layer's weights, which weight decay and a
    fixed learning rate see differently."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's mask and its 1/(1 - p) rescaling, undone: kept units pass unscaled.
        return F.dropout(x, self.p, self.training, self.inplace) * (1.0 - self.p)


DROPOUT_SCALINGS = ("inverted", "test")


def make_dropout(p: float, scaling: str = "inverted") -> list[nn.Module]:
    """The dropout layer of a fully connected block (none for ``p == 0``): ``scaling="inverted"``
    is ``torch.nn.Dropout``, ``"test"`` the paper's test-time scaling (:class:`ScaledAtTestDropout`)."""
    if p == 0:
        return []
    return [ScaledAtTestDropout(p) if scaling == "test" else nn.Dropout(p)]


def check_options(*, towers: int, widths: Sequence[int], convs: int, remove_conv: int, middle: Sequence[int],
                  dropout: float, init: str, inits: Sequence[str], bias_init: float | None,
                  dropout_scaling: str = "inverted") -> None:
    """The options :class:`~alexnet.models.alexnet.AlexNet` and its small siblings share, checked
    alike: ``towers`` 1 or 2 (§3.2), ``widths`` one per conv layer (``convs`` of them),
    ``remove_conv`` 0 or one of the ``middle`` conv layers (§7's depth ablation), ``dropout`` in
    [0, 1) (§4.2), ``init`` one of ``inits``, and ``bias_init`` only where ``init="paper"`` sets the
    biases (§5). A ``ValueError`` naming the option and what it accepts."""
    if towers not in (1, 2):
        raise ValueError(f"towers must be 1 or 2, got {towers}")
    if remove_conv not in (0, *middle):
        which = (f"the middle conv layer, {middle[0]}" if len(middle) == 1
                 else f"a middle conv layer: {', '.join(map(str, middle[:-1]))} or {middle[-1]}")
        raise ValueError(f"remove_conv must be 0 (none) or {which}; got {remove_conv}")
    if len(widths) != convs:
        raise ValueError(f"widths must list {convs} conv widths, got {list(widths)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if dropout_scaling not in DROPOUT_SCALINGS:
        raise ValueError(f"unknown dropout_scaling {dropout_scaling!r}; accepted: {', '.join(DROPOUT_SCALINGS)}")
    if dropout_scaling != "inverted" and dropout == 0:
        raise ValueError(f"dropout_scaling={dropout_scaling!r} has no effect with dropout=0: there is no dropout")
    if init not in inits:
        raise ValueError(f"unknown init {init!r}; accepted: {', '.join(inits)}")
    if bias_init is not None and init != "paper":
        raise ValueError(f"bias_init={bias_init} has no effect with init={init!r}: only init='paper' sets the biases")


# -- two towers as two convolutions (§3.2) --


class TwoTowerConv2d(nn.Conv2d):
    """A grouped convolution computed as one plain convolution per group on its channel slice,
    concatenated. Same ``weight`` (C_out × C_in/groups × k × k) and ``bias`` as the grouped layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        cin, cout = self.in_channels // g, self.out_channels // g
        outs = []
        for t in range(g):
            w = self.weight[t * cout : (t + 1) * cout]
            b = self.bias[t * cout : (t + 1) * cout] if self.bias is not None else None
            outs.append(F.conv2d(x[:, t * cin : (t + 1) * cin], w, b, self.stride, self.padding, self.dilation, 1))
        return torch.cat(outs, dim=1)  # N×C_out×H×W, tower 0's channels first as in the grouped layer


def two_tower_convs(model: nn.Module) -> nn.Module:
    """Replace every grouped ``nn.Conv2d`` (groups > 1) of ``model`` in place by a
    :class:`TwoTowerConv2d` sharing its parameters; the state_dict keys and shapes are unchanged."""
    for name, mod in list(model.named_children()):
        if type(mod) is nn.Conv2d and mod.groups > 1:
            new = TwoTowerConv2d.__new__(TwoTowerConv2d)
            new.__dict__.update(mod.__dict__)  # the same Parameter objects, hooks and attributes
            setattr(model, name, new)
        else:
            two_tower_convs(mod)
    return model
