"""The paper's AlexNet (Krizhevsky et al. 2012) and the one-weird-trick variant, as one class.

Every architectural choice the paper ablates is a constructor option, so the variants are
configurations of :class:`AlexNet` rather than copies of it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from alexnet.models.layers import PAPER_LRN, check_options, make_activation, make_dropout, make_lrn

PAPER_WIDTHS = (96, 256, 384, 384, 256)
OWT_WIDTHS = (64, 192, 384, 256, 256)
# What alexnet_owt changes from the paper's defaults: torchvision's layout.
OWT_OPTIONS: dict[str, object] = dict(lrn="none", towers=1, widths=OWT_WIDTHS, dropout_first=True, adaptive_pool=True,
                                      init="torch")


class AlexNet(nn.Module):
    """Five conv layers and three fully connected layers (§3, Figure 2).

    Options (the paper's defaults):
      activation="relu" (§3.1), lrn="paper" (§3.3; "released" = alpha/n, "none"),
      overlapping_pool=True (§3.4: 3×3 stride 2; False = 2×2 stride 2), dropout=0.5 (§4.2),
      towers=2 (§3.2: conv2, conv4, conv5 see only their own tower), widths (conv kernels),
      hidden=4096 (fc6, fc7), dropout_first=False (paper: fc → ReLU → dropout; torchvision puts
      dropout before each FC layer), adaptive_pool=False (torchvision pools to 6×6 adaptively),
      bias_init=1.0 (§5: the bias of conv2, conv4, conv5, fc6, fc7; only with init="paper"),
      init="paper" (§5: N(0, 0.01); "torch" keeps PyTorch's defaults), lrn_halo=True (on one device
      LRN's window of 5 maps crosses the tower boundary: the last 2 maps of tower 1 and the first 2
      of tower 2 see each other's; False normalises each tower's maps among themselves, as the
      paper's two GPUs did, §3.2), remove_conv=0 (§7's depth ablation: 2, 3 or 4 takes that
      middle conv layer out with its ReLU and LRN, keeping its pooling; the next layer reads the
      previous one's maps), dropout_scaling="inverted" (torch.nn.Dropout: kept units ×2 while
      training, nothing at test time; "test" is §4.2 as written: kept units unscaled while training,
      every output ×0.5 at test time).

    Caffe's two reference nets (``bvlc_alexnet``, ``bvlc_reference_caffenet``) differ from the paper
    in small documented ways, expressed by four more options (the paper's defaults):
      conv1_padding=2 (Caffe: 0, with input_size=227: (227 - 11) / 4 + 1 = 55, the same 55×55 maps),
      input_size=224 (the crop the network is built for; the maps must reach 6×6 before fc6 unless
      adaptive_pool), lrn_k=2.0 (§3.3's k; Caffe's is 1, with lrn="released": alpha / n, Caffe's
      convention too), lrn_after_pool=False (§3.3: LRN, then pooling; CaffeNet pools, then normalises).
    """

    input_size = 224

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        activation: str = "relu",
        lrn: bool | str = "paper",
        overlapping_pool: bool = True,
        dropout: float = 0.5,
        towers: int = 2,
        widths: Sequence[int] = PAPER_WIDTHS,
        hidden: int = 4096,
        dropout_first: bool = False,
        adaptive_pool: bool = False,
        bias_init: float | None = None,
        init: str = "paper",
        in_channels: int = 3,
        remove_conv: int = 0,
        lrn_halo: bool = True,
        conv1_padding: int = 2,
        input_size: int = 224,
        lrn_k: float = 2.0,
        lrn_after_pool: bool = False,
        dropout_scaling: str = "inverted",
    ) -> None:
        super().__init__()
        check_options(towers=towers, widths=widths, convs=5, remove_conv=remove_conv, middle=(2, 3, 4),
                      dropout=dropout, init=init, inits=("paper", "torch"), bias_init=bias_init,
                      dropout_scaling=dropout_scaling)
        if not lrn_halo and towers != 2:
            raise ValueError(f"lrn_halo=False has no effect with towers={towers}: it keeps LRN within each of the two towers")
        if not lrn_halo and make_lrn(lrn) is None:
            raise ValueError(f"lrn_halo=False has no effect with lrn={lrn!r}: there is no response normalisation")
        if make_lrn(lrn) is None and (lrn_k != PAPER_LRN["k"] or lrn_after_pool):
            what = f"lrn_k={lrn_k}" if lrn_k != PAPER_LRN["k"] else "lrn_after_pool=True"
            raise ValueError(f"{what} has no effect with lrn={lrn!r}: there is no response normalisation")
        if conv1_padding < 0:
            raise ValueError(f"conv1_padding must be 0 or more, got {conv1_padding}")
        w1, w2, w3, w4, w5 = widths
        g = towers  # §3.2: on one device the two towers are convolution groups
        k, s = (3, 2) if overlapping_pool else (2, 2)  # §3.4: z = 3, s = 2 overlaps

        # Caffe rounds pooled sizes up, PyTorch down; on the maps below (55, 27, 13) both agree.
        maps_out = (input_size + 2 * conv1_padding - 11) // 4 + 1
        for _ in range(3):
            maps_out = (maps_out - k) // s + 1
        if maps_out != 6 and not adaptive_pool:
            raise ValueError(f"input_size={input_size} with conv1_padding={conv1_padding} gives {maps_out}×{maps_out} maps "
                             f"before fc6, not 6×6 (224 with padding 2 as in the paper, 227 with 0 as in Caffe)")

        def pool() -> nn.Module:
            return nn.MaxPool2d(kernel_size=k, stride=s)

        def block(conv: nn.Module, norm: bool, pooled: bool) -> list[nn.Module]:
            layers = [conv, make_activation(activation)]
            n = make_lrn(lrn, groups=1 if lrn_halo else g, k=lrn_k) if norm else None
            if pooled and lrn_after_pool:  # CaffeNet: pool, then normalise
                return [*layers, pool(), *([n] if n is not None else [])]
            if n is not None:
                layers.append(n)  # §3.3: LRN after the ReLU, before pooling
            if pooled:
                layers.append(pool())
            return layers

        # Per conv layer: (out maps, kernel, stride, padding, groups, LRN, pooled after), Figure 2.
        # 224×224 with padding 2: (224 + 4 - 11) / 4 + 1 = 55 -> 55×55 after conv1, 27×27 after pool1.
        specs = [
            (w1, 11, 4, conv1_padding, 1, True, True),  # conv1 -> 27×27
            (w2, 5, 1, 2, g, True, True),  # conv2, own tower -> 13×13
            (w3, 3, 1, 1, 1, False, False),  # conv3 crosses the towers
            (w4, 3, 1, 1, g, False, False),  # conv4, own tower
            (w5, 3, 1, 1, g, False, True),  # conv5, own tower -> 6×6
        ]
        layers: list[nn.Module] = []
        self._conv_numbers: list[int] = []  # which of the paper's conv1..conv5 each Conv2d is
        maps = in_channels
        for number, (out, kernel, stride, pad, groups, norm, pooled) in enumerate(specs, start=1):
            if number == remove_conv:  # §7: the layer goes, its pooling stays so map sizes keep
                layers.extend([pool()] if pooled else [])
                continue
            layers += block(nn.Conv2d(maps, out, kernel, stride=stride, padding=pad, groups=groups), norm, pooled)
            self._conv_numbers.append(number)
            maps = out
        self.features = nn.Sequential(*layers)
        self.avgpool: nn.Module = nn.AdaptiveAvgPool2d((6, 6)) if adaptive_pool else nn.Identity()

        def fc(n_in: int, n_out: int) -> list[nn.Module]:
            drop = make_dropout(dropout, dropout_scaling)
            if dropout_first:
                return [*drop, nn.Linear(n_in, n_out), make_activation(activation)]
            return [nn.Linear(n_in, n_out), make_activation(activation), *drop]

        self.classifier = nn.Sequential(
            *fc(w5 * 6 * 6, hidden),
            *fc(hidden, hidden),
            nn.Linear(hidden, num_classes),
        )
        self.towers = towers
        self.lrn_halo = lrn_halo
        self.input_size = input_size
        if init == "paper":
            self._init_paper(1.0 if bias_init is None else bias_init)

    def _init_paper(self, bias_init: float) -> None:
        # §5: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC layers, 0 elsewhere.
        convs = dict(zip(self._conv_numbers, (m for m in self.features if isinstance(m, nn.Conv2d))))
        fcs = [m for m in self.classifier if isinstance(m, nn.Linear)]
        for m in [*convs.values(), *fcs]:
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            nn.init.zeros_(m.bias)
        for m in [convs[i] for i in (2, 4, 5) if i in convs] + fcs[:2]:
            nn.init.constant_(m.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)  # N×(C·6·6)
        return self.classifier(x)


def alexnet(num_classes: int = 1000, **options: object) -> AlexNet:
    """The 2012 network as the paper describes it: 60,965,224 parameters for 1000 classes."""
    return AlexNet(num_classes, **options)  # type: ignore[arg-type]


# Caffe's reference nets as options of the paper's (see AlexNet's docstring): bvlc_alexnet, and
# bvlc_reference_caffenet, which also pools before normalising in the first two blocks.
CAFFE_OPTIONS: dict[str, object] = dict(conv1_padding=0, input_size=227, lrn="released", lrn_k=1.0)
CAFFENET_OPTIONS: dict[str, object] = {**CAFFE_OPTIONS, "lrn_after_pool": True}


def alexnet_owt(num_classes: int = 1000, **options: object) -> AlexNet:
    """Krizhevsky 2014's one-weird-trick net, laid out exactly as ``torchvision.models.alexnet``
    (same state_dict keys and shapes, 61,100,840 parameters)."""
    return AlexNet(num_classes, **{**OWT_OPTIONS, **options})  # type: ignore[arg-type]
