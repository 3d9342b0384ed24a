import math
import re

import pytest
import torch
import torchvision
from torch import nn

from alexnet import models
from alexnet.models import LocalResponseNorm
from alexnet.models.layers import lrn_reference


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_names():
    assert models.names() == ["alexnet", "alexnet-owt", "alexnet-cifar", "lenet5"]


@pytest.mark.parametrize(
    "name,classes,count",
    [("alexnet", 1000, 60_965_224), ("alexnet-owt", 1000, 61_100_840), ("alexnet-cifar", 10, 89_578), ("lenet5", 10, 62_006)],
)
def test_parameter_counts(name, classes, count):
    assert n_params(models.create(name, classes)) == count


def test_one_tower_without_groups_count():
    # 62,378,344 with conv2, conv4 and conv5 ungrouped: every kernel sees both towers' channels (§3.2).
    assert n_params(models.create("alexnet", towers=1)) == 62_378_344


def test_lenet5_grayscale_is_lecuns_count():
    assert n_params(models.create("lenet5", 10, in_channels=1)) == 61_706


def test_conv1_geometry_and_output():
    m = models.create("alexnet").eval()
    x = torch.randn(2, 3, 224, 224)
    assert m.features[0](x).shape == (2, 96, 55, 55)
    assert m(x).shape == (2, 1000)
    shapes = []
    h = x
    for layer in m.features:
        h = layer(h)
        if isinstance(layer, nn.MaxPool2d):
            shapes.append(tuple(h.shape[1:]))
    assert shapes == [(96, 27, 27), (256, 13, 13), (256, 6, 6)]


def test_paper_layers():
    m = models.create("alexnet")
    convs = [l for l in m.features if isinstance(l, nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]  # §3.2: conv3 crosses towers
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert tuple(convs[1].weight.shape) == (256, 48, 5, 5)
    assert tuple(convs[3].weight.shape) == (384, 192, 3, 3)
    lrns = [l for l in m.features if isinstance(l, LocalResponseNorm)]
    assert len(lrns) == 2 and all((l.size, l.alpha, l.beta, l.k) == (5, 1e-4, 0.75, 2.0) for l in lrns)
    assert all(l.effective_alpha == 1e-4 for l in lrns)
    pools = [l for l in m.features if isinstance(l, nn.MaxPool2d)]
    assert all((p.kernel_size, p.stride) == (3, 2) for p in pools)
    # fc -> ReLU -> dropout(0.5), twice, then fc8
    kinds = [type(l).__name__ for l in m.classifier]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert all(l.p == 0.5 for l in m.classifier if isinstance(l, nn.Dropout))
    # LRN follows the ReLU of conv1 and conv2, before pooling
    f = [type(l).__name__ for l in m.features]
    assert f[:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d", "Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"]


def test_towers_are_independent():
    """conv2 output maps of tower 1 must not depend on conv1 maps of tower 2."""
    m = models.create("alexnet")
    conv2 = m.features[4]
    x = torch.randn(1, 96, 27, 27, requires_grad=True)
    conv2(x)[:, :128].sum().backward()
    assert x.grad[:, 48:].abs().sum() == 0 and x.grad[:, :48].abs().sum() > 0


def test_paper_initialisation():
    torch.manual_seed(0)
    m = models.create("alexnet")
    convs = [l for l in m.features if isinstance(l, nn.Conv2d)]
    fcs = [l for l in m.classifier if isinstance(l, nn.Linear)]
    layers = convs + fcs
    for l in layers:
        w = l.weight
        assert abs(w.mean().item()) < 1e-3
        assert abs(w.std().item() - 0.01) < 0.01 * 0.05  # N(0, 0.01)
    ones = {1, 3, 4, 5, 6}  # conv2, conv4, conv5, fc6, fc7
    for i, l in enumerate(layers):
        assert torch.all(l.bias == (1.0 if i in ones else 0.0)), i


def test_options_change_architecture():
    m = models.create("alexnet", activation="tanh", lrn="none", overlapping_pool=False, dropout=0.0, towers=1)
    assert not any(isinstance(l, (nn.ReLU, LocalResponseNorm, nn.Dropout)) for l in m.modules())
    assert any(isinstance(l, nn.Tanh) for l in m.modules())
    assert all(p.kernel_size == 2 for p in m.modules() if isinstance(p, nn.MaxPool2d))
    assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    released = models.create("alexnet", lrn="released")
    assert [l.effective_alpha for l in released.modules() if isinstance(l, LocalResponseNorm)] == [2e-5, 2e-5]


def test_check_name_is_one_line_naming_the_known_models():
    from alexnet.errors import UserError

    models.check_name("alexnet")
    with pytest.raises(UserError, match="^unknown model 'vgg'; accepted: alexnet, alexnet-owt, alexnet-cifar, lenet5$"):
        models.check_name("vgg")


def test_bad_options_name_what_is_accepted():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*alexnet"):
        models.create("vgg")
    with pytest.raises(ValueError, match="'lrn' does not apply to model 'lenet5'"):
        models.create("lenet5", lrn="none")
    with pytest.raises(ValueError, match="activation"):
        models.create("alexnet", activation="swishy")
    with pytest.raises(ValueError, match="towers"):
        models.create("alexnet", towers=3)


def test_torchvision_interop():
    ours = models.create("alexnet-owt").eval()
    tv = torchvision.models.alexnet().eval()
    a, b = ours.state_dict(), tv.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    ours.load_state_dict(b)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))


@pytest.mark.parametrize("name,size,classes", [("alexnet", 224, 7), ("alexnet-owt", 224, 7), ("alexnet-cifar", 32, 10), ("lenet5", 32, 10)])
def test_gradients_reach_every_parameter(name, size, classes):
    torch.manual_seed(0)
    # bias 1 and dropout are fine; use a small batch to keep it quick
    m = models.create(name, classes)
    x = torch.randn(2, 3, size, size) * 50
    m(x).logsumexp(1).sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_lrn_matches_closed_form():
    torch.manual_seed(0)
    x = torch.randn(2, 11, 5, 4) * 30
    lrn = LocalResponseNorm()
    ref = lrn_reference(x, 5, 1e-4, 0.75, 2.0)
    assert torch.allclose(lrn(x), ref, rtol=1e-5, atol=0)
    # one channel by hand: i = 0 sees channels 0..2 (window clipped at the edge)
    s = (x[:, 0:3] ** 2).sum(1)
    assert torch.allclose(lrn(x)[:, 0], x[:, 0] / (2 + 1e-4 * s) ** 0.75, rtol=1e-6)
    # i = 5 sees 3..7
    s = (x[:, 3:8] ** 2).sum(1)
    assert torch.allclose(lrn(x)[:, 5], x[:, 5] / (2 + 1e-4 * s) ** 0.75, rtol=1e-6)


def test_lrn_alpha_not_divided_by_n_unlike_torch():
    x = torch.randn(2, 16, 3, 3) * 40
    ours = LocalResponseNorm()(x)
    assert torch.allclose(ours, nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(x), rtol=1e-5)
    assert not torch.allclose(ours, nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(x), rtol=1e-5)


@pytest.mark.parametrize("name,index,size", [("alexnet", 2, 224), ("alexnet", 3, 224), ("alexnet", 4, 224),
                                             ("alexnet-owt", 3, 224), ("alexnet-cifar", 2, 32)])
def test_remove_conv_takes_one_middle_layer_out(name: str, index: int, size: int) -> None:
    # §7: a middle conv goes with its ReLU and LRN; its pooling stays; the next conv reads the previous maps.
    full = models.create(name, 10)
    cut = models.create(name, 10, remove_conv=index)
    convs_full = [m for m in full.features if isinstance(m, nn.Conv2d)]
    convs_cut = [m for m in cut.features if isinstance(m, nn.Conv2d)]
    assert len(convs_cut) == len(convs_full) - 1
    assert convs_cut[index - 1].in_channels == convs_full[index - 2].out_channels
    assert convs_cut[index - 1].out_channels == convs_full[index].out_channels
    pools = lambda net: sum(isinstance(m, nn.MaxPool2d) for m in net.features)  # noqa: E731
    assert pools(cut) == pools(full)
    lrns = lambda net: sum(isinstance(m, models.LocalResponseNorm) for m in net.features)  # noqa: E731
    assert lrns(cut) == lrns(full) - (1 if index == 2 and lrns(full) else 0)
    assert cut(torch.zeros(2, 3, size, size)).shape == (2, 10)


def test_remove_conv_keeps_the_paper_init_per_layer() -> None:
    # §5: bias 1 in conv2, conv4, conv5; with conv4 removed, conv3 keeps 0 and conv5 keeps 1.
    net = models.create("alexnet", 10, remove_conv=4)
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert [float(c.bias.detach().mean()) for c in convs] == [0.0, 1.0, 0.0, 1.0]
    assert all(abs(float(c.weight.detach().std()) - 0.01) < 1e-3 for c in convs)


@pytest.mark.parametrize("name,index", [("alexnet", 1), ("alexnet", 5), ("alexnet-cifar", 3), ("alexnet-cifar", 1)])
def test_remove_conv_refuses_the_first_and_last_layers(name: str, index: int) -> None:
    with pytest.raises(ValueError, match="remove_conv"):
        models.create(name, 10, remove_conv=index)


# -- Caffe's two reference nets as options of the paper's ---------------------------------------


def test_caffe_options_build_bvlc_alexnet():
    from alexnet.models.alexnet import CAFFE_OPTIONS

    m = models.create("alexnet", **CAFFE_OPTIONS)
    assert m.input_size == 227 and m.features[0].padding == (0, 0)
    lrns = [l for l in m.features if isinstance(l, LocalResponseNorm)]
    # Caffe: b = a / (1 + (alpha / n) sum a^2)^beta
    assert len(lrns) == 2 and all((l.k, l.effective_alpha) == (1.0, 1e-4 / 5) for l in lrns)
    with torch.no_grad():
        x = torch.randn(1, 3, 227, 227)
        assert m.features(x).shape == (1, 256, 6, 6)  # 55 -> 27 -> 13 -> 6, as the paper's 224
    assert sum(p.numel() for p in m.parameters()) == 60_965_224  # the same parameters as the paper's
    kinds = [type(l).__name__ for l in m.features][:4]
    assert kinds == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"]  # bvlc_alexnet: norm, then pool


def test_caffenet_pools_before_normalising():
    from alexnet.models.alexnet import CAFFENET_OPTIONS

    m = models.create("alexnet", **CAFFENET_OPTIONS)
    kinds = [type(l).__name__ for l in m.features]
    assert kinds[:4] == ["Conv2d", "ReLU", "MaxPool2d", "LocalResponseNorm"]
    assert kinds[4:8] == ["Conv2d", "ReLU", "MaxPool2d", "LocalResponseNorm"]
    assert kinds.count("LocalResponseNorm") == 2


def test_caffe_options_default_to_the_paper():
    paper = models.create("alexnet")
    assert paper.input_size == 224 and paper.features[0].padding == (2, 2)
    assert [type(l).__name__ for l in paper.features][:4] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"]
    assert all(l.k == 2.0 for l in paper.features if isinstance(l, LocalResponseNorm))


def test_caffe_options_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="gives 5×5 maps before fc6"):
        models.create("alexnet", conv1_padding=0)  # 224 unpadded: 54 -> 26 -> 12 -> 5
    with pytest.raises(ValueError, match="lrn_k=1.0 has no effect with lrn='none'"):
        models.create("alexnet", lrn="none", lrn_k=1.0)
    with pytest.raises(ValueError, match="lrn_after_pool=True has no effect"):
        models.create("alexnet", lrn="none", lrn_after_pool=True)
    assert models.input_size("alexnet", {"input_size": 227, "conv1_padding": 0}) == 227
    assert models.input_size("alexnet-cifar", {}) == 32


@pytest.mark.parametrize("name,convs,middle,inits", [("alexnet", 5, "a middle conv layer: 2, 3 or 4", "paper, torch"),
                                                     ("alexnet-cifar", 3, "the middle conv layer, 2", "paper, torch, he")])
def test_the_shared_options_are_refused_alike(name: str, convs: int, middle: str, inits: str) -> None:
    # AlexNet and its CIFAR sibling take the same ablation options: one check, the same lines.
    cases = [({"towers": 3}, "towers must be 1 or 2, got 3"),
             ({"remove_conv": 1}, f"remove_conv must be 0 (none) or {middle}; got 1"),
             ({"widths": (8, 8)}, f"widths must list {convs} conv widths, got [8, 8]"),
             ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
             ({"init": "xavier"}, f"unknown init 'xavier'; accepted: {inits}"),
             ({"init": "torch", "bias_init": 0.5}, "bias_init=0.5 has no effect with init='torch': only init='paper' sets the biases")]
    for opts, line in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(line)}$"):
            models.create(name, 10, **opts)


# -- §4.2's dropout as written: unscaled while training, ×(1 - p) at test time ---------------------


def test_test_time_scaled_dropout_keeps_units_unscaled_and_halves_at_test():
    from alexnet.models.layers import ScaledAtTestDropout

    x = torch.rand(64, 4096) + 0.5
    d = ScaledAtTestDropout(0.5).train()
    torch.manual_seed(0)
    y = d(x)
    kept = y != 0
    assert torch.equal(y[kept], x[kept])  # kept units pass unscaled (torch's 1/(1-p) undone exactly for p = 0.5)
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    d.eval()
    assert torch.equal(d(x), x * 0.5)  # "multiply their outputs by 0.5"


@pytest.mark.parametrize("name", ["alexnet", "alexnet-cifar"])
def test_the_two_dropout_scalings_are_one_function_up_to_the_next_layers_weights(name):
    """Inverted dropout with the next layer's weights × (1 - p) computes what the paper's form
    computes, in training (the same mask) and at test time."""
    paper = models.create(name, 10, dropout=0.5, dropout_scaling="test")
    inverted = models.create(name, 10, dropout=0.5)
    inverted.load_state_dict(paper.state_dict())
    with torch.no_grad():
        for i, m in enumerate(paper.classifier):
            if isinstance(m, nn.Dropout):
                nxt = next(l for l in list(inverted.classifier)[i + 1:] if isinstance(l, nn.Linear))
                nxt.weight.mul_(0.5)
    x = torch.randn(2, 3, paper.input_size, paper.input_size)
    for mode in ("train", "eval"):
        getattr(paper, mode)(), getattr(inverted, mode)()
        torch.manual_seed(1)
        a = paper(x)
        torch.manual_seed(1)
        b = inverted(x)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    plain = models.create(name, 10, dropout=0.5)
    plain.load_state_dict(paper.state_dict())  # the same weights, inverted: the option changes the function
    assert not torch.allclose(paper.eval()(x), plain.eval()(x))


def test_dropout_scaling_is_refused_where_it_cannot_act():
    with pytest.raises(ValueError, match="unknown dropout_scaling 'half'; accepted: inverted, test"):
        models.create("alexnet-cifar", 10, dropout=0.5, dropout_scaling="half")
    with pytest.raises(ValueError, match="dropout_scaling='test' has no effect with dropout=0"):
        models.create("alexnet-cifar", 10, dropout_scaling="test")  # the CIFAR net's default: no dropout
