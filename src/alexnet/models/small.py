"""Small siblings for CPUs and 32×32 data: a net of the authors' CIFAR-10 family and LeNet-5."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from alexnet.models.layers import check_options, make_activation, make_dropout, make_lrn


class CifarNet(nn.Module):
    """The family of the authors' CIFAR-10 nets (cuda-convnet's "18% error" net; Figure 1's
    four-layer CNN): three 5×5 conv layers of 32, 32, 64 kernels, each followed by the
    activation, response normalisation on the first two and overlapping 3×3/2 max-pooling,
    then one fully connected layer. Takes the same ablation options as :class:`AlexNet`.
    32×32 -> 16×16 -> 8×8 -> 4×4×64 -> classes.

    ``init="he"`` (default) suits its unit-scale inputs; ``init="paper"`` is cuda-convnet's
    CIFAR initialisation for raw 0–255 inputs (std 1e-4 in conv1, 1e-2 elsewhere), which
    learns far more slowly; ``init_gain`` multiplies either's standard deviations.

    ``input_norm`` declares the input the net is built for (see ``alexnet.data.augment.INPUT_NORMS``;
    None: the registry's ``mean_image_std``): ``"mean_image"`` is raw 0–255 RGB minus the mean
    image, as cuda-convnet's CIFAR nets were fed. ``pooling="cuda-convnet"`` takes the pools of
    cuda-convnet's example CIFAR nets: max after conv1, average after conv2 and conv3.

    ``dropout_scaling`` as :class:`AlexNet`'s ("test": §4.2's test-time ×(1 - p) instead of the
    inverted form).

    Figure 1's net (§3.1): ``activation=relu|tanh, lrn="none", init="paper",
    input_norm="mean_image", pooling="cuda-convnet"`` and no dropout.
    """

    input_size = 32

    def __init__(
        self,
        num_classes: int = 10,
        *,
        activation: str = "relu",
        lrn: bool | str = "paper",
        overlapping_pool: bool = True,
        dropout: float = 0.0,
        towers: int = 1,
        widths: Sequence[int] = (32, 32, 64),
        init: str = "he",
        init_gain: float = 1.0,
        bias_init: float | None = None,
        in_channels: int = 3,
        remove_conv: int = 0,
        input_norm: str | None = None,
        pooling: str = "max",
        dropout_scaling: str = "inverted",
    ) -> None:
        super().__init__()
        check_options(towers=towers, widths=widths, convs=3, remove_conv=remove_conv, middle=(2,),
                      dropout=dropout, init=init, inits=("paper", "torch", "he"), bias_init=bias_init,
                      dropout_scaling=dropout_scaling)
        if not init_gain > 0:
            raise ValueError(f"init_gain must be > 0, got {init_gain}")
        if init == "torch" and init_gain != 1.0:
            raise ValueError("init_gain applies to init 'paper' and 'he', not to torch's default init")
        if input_norm is not None and input_norm not in ("mean_image", "mean_image_std", "mean_std"):
            raise ValueError(f"unknown input_norm {input_norm!r}; accepted: mean_image, mean_image_std, mean_std")
        if pooling not in ("max", "cuda-convnet"):
            raise ValueError(f"unknown pooling {pooling!r}; accepted: max, cuda-convnet")
        self.input_norm = input_norm
        w1, w2, w3 = widths
        # Pad the pools so that both 3/2 (overlapping) and 2/2 halve the map exactly.
        pool_args = dict(kernel_size=3, stride=2, padding=1) if overlapping_pool else dict(kernel_size=2, stride=2)

        def pool(i: int) -> nn.Module:
            if pooling == "cuda-convnet" and i > 1:  # its example nets average after conv2 and conv3
                return nn.AvgPool2d(**pool_args, count_include_pad=False)  # type: ignore[arg-type]
            return nn.MaxPool2d(**pool_args)  # type: ignore[arg-type]

        def block(conv: nn.Module, norm: bool, i: int) -> list[nn.Module]:
            layers = [conv, make_activation(activation)]
            if norm and (n := make_lrn(lrn)) is not None:
                layers.append(n)
            layers.append(pool(i))
            return layers

        conv2: list[nn.Module] = (  # §7's depth ablation takes conv2 out, keeping its pooling
            [pool(2)] if remove_conv == 2
            else block(nn.Conv2d(w1, w2, 5, padding=2, groups=towers), norm=True, i=2))
        self.features = nn.Sequential(
            *block(nn.Conv2d(in_channels, w1, 5, padding=2), norm=True, i=1),  # 16×16
            *conv2,  # 8×8, own tower
            *block(nn.Conv2d(w1 if remove_conv == 2 else w2, w3, 5, padding=2), norm=False, i=3),  # 4×4, crosses towers
        )
        self.classifier = nn.Sequential(
            *make_dropout(dropout, dropout_scaling),
            nn.Linear(w3 * 4 * 4, num_classes),
        )
        self.towers = towers
        if init == "paper":
            # The paper's recipe for this family: N(0, 0.01) would starve three small layers;
            # cuda-convnet's CIFAR config uses std 1e-4 / 1e-2 / 1e-2 / 1e-2. We keep N(0, 0.01)
            # except the first layer, whose raw-pixel inputs (0–255 minus mean) need the smaller std.
            convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
            nn.init.normal_(convs[0].weight, std=1e-4 * init_gain)
            for m in convs[1:] + [m for m in self.classifier if isinstance(m, nn.Linear)]:
                nn.init.normal_(m.weight, std=1e-2 * init_gain)
            for m in convs + [m for m in self.classifier if isinstance(m, nn.Linear)]:
                nn.init.constant_(m.bias, 0.0)
            for m in convs[1:]:
                nn.init.constant_(m.bias, bias_init or 0.0)

        elif init == "he":
            # He et al. 2015 for ReLU layers, for inputs of unit scale (input_norm "mean_image_std").
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(m.weight, std=init_gain * (2.0 / m.weight[0].numel()) ** 0.5)
                    nn.init.zeros_(m.bias)
            # The output layer feeds the softmax, not a ReLU: the paper's N(0, 0.01) keeps the first
            # logits near zero (loss ln C) instead of He's unit-scale logits, whose early gradients
            # kill the ReLUs of a net without response normalisation.
            nn.init.normal_(self.classifier[-1].weight, std=0.01 * init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)  # N×(64·4·4)
        return self.classifier(x)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) for 32×32 inputs: C1 6@5×5, S2, C3 16@5×5, S4, C5 120@5×5,
    F6 84, output. Subsampling as average pooling, LeCun's scaled tanh. 61,706 parameters on
    one channel, 62,006 on RGB."""

    input_size = 32

    def __init__(self, num_classes: int = 10, *, activation: str = "lecun_tanh", in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), make_activation(activation), nn.AvgPool2d(2),  # 28 -> 14
            nn.Conv2d(6, 16, 5), make_activation(activation), nn.AvgPool2d(2),  # 10 -> 5
            nn.Conv2d(16, 120, 5), make_activation(activation),  # C5: 1×1
        )
        self.classifier = nn.Sequential(nn.Linear(120, 84), make_activation(activation), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)  # N×120
        return self.classifier(x)
