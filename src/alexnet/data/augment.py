"""The paper's augmentation (§4.1) and test-time crops (§4.1, 10-crop), as batched tensor
operations on the training device: uint8 N×3×H×W batches in, the compute dtype out.

All randomness is a counter-based hash of (seed, epoch, sample index, stream), so a sample's
crop, flip and colour noise never depend on the batch it lands in, the number of loader workers
or processes, or the device: exact resume and distributed training rely on this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_M32 = 0xFFFFFFFF
# torchvision's ImageNet normalisation, for networks trained that way (alexnet-owt's weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# "mean_image": §2, raw 0–255 RGB minus the per-pixel mean image (the paper's networks);
# "mean_image_std": the same divided by the training set's pixel standard deviation, so small
# nets start with unit-scale inputs; "mean_std": torchvision's per-channel normalisation.
INPUT_NORMS = ("mean_image", "mean_image_std", "mean_std")
# The order of the colour channels the network reads: "rgb" (ours, torchvision's) or "bgr"
# (Caffe's networks, which read images as OpenCV decodes them). Images, the mean image and every
# normalisation constant stay RGB; a crop's channels are reversed after it is normalised.
CHANNEL_ORDERS = ("rgb", "bgr")

# Streams of the counter-based generator.
_CROP_Y, _CROP_X, _FLIP, _PCA = 0, 1, 2, 3


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (lowbias32) on int64 tensors holding values in [0, 2^32).
    Products may wrap in int64; masking keeps the exact low 32 bits."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _hash32_int(x: int) -> int:
    """:func:`_hash32` on one Python integer (the same arithmetic, no tensor)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def sample_keys(seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """Per-sample 32-bit keys from (seed, epoch, index), computed where ``indices`` live.
    The (seed, epoch) part is a Python integer: it reaches the device as a kernel argument, not
    as a copied tensor."""
    base = _hash32_int(_hash32_int(seed & _M32) ^ (epoch & _M32))
    return _hash32((indices.to(torch.int64) & _M32) ^ base)


def uniform(keys: torch.Tensor, stream: int) -> torch.Tensor:
    """float64 uniforms in [0, 1), one per key, independent across streams."""
    h = _hash32(keys ^ ((stream * 0x9E3779B9 + 0x632BE5AB) & _M32))
    return (h >> 8).to(torch.float64) / float(1 << 24)


def normal(keys: torch.Tensor, stream: int) -> torch.Tensor:
    """Standard normals (Box–Muller) from two uniform streams."""
    u1 = uniform(keys, 2 * stream + 1000).clamp_min(2.0**-25)
    u2 = uniform(keys, 2 * stream + 1001)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


@dataclass
class CropParams:
    oy: torch.Tensor  # N, top edge
    ox: torch.Tensor  # N, left edge
    flip: torch.Tensor  # N, bool


class Augment:
    """Mean-image subtraction, random crops, flips and "fancy PCA" colour noise (§2, §4.1).

    ``mean``: 3×H×W per-pixel mean image (0–255); ``eigval``/``eigvec``: RGB covariance on the
    [0, 1] scale (columns of ``eigvec`` are eigenvectors). ``input_norm``: one of INPUT_NORMS;
    ``channel_order``: one of CHANNEL_ORDERS.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        eigval: torch.Tensor,
        eigvec: torch.Tensor,
        crop: int,
        *,
        random_crop: bool = True,
        flip: bool = True,
        pca_std: float = 0.1,
        crop_padding: int = 0,
        input_norm: str = "mean_image",
        channel_order: str = "rgb",
        seed: int = 0,
    ) -> None:
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {input_norm!r}; accepted: {', '.join(INPUT_NORMS)}")
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"unknown channel_order {channel_order!r}; accepted: {', '.join(CHANNEL_ORDERS)}")
        self.size = tuple(mean.shape[-2:])
        h, w = self.size
        if crop > h + 2 * crop_padding or crop > w + 2 * crop_padding:
            from alexnet.errors import UserError

            raise UserError(
                f"images are {h}×{w}, smaller than the model input {crop}×{crop}; "
                f"prepare the data with --size {round(crop * 256 / 224)} or pick a model for this size"
            )
        self.mean = mean.float()
        self.eigval = eigval.float()
        self.eigvec = eigvec.float()
        self.crop = crop
        self.random_crop = random_crop
        self.flip = flip
        self.pca_std = pca_std
        self.pad = crop_padding
        self.input_norm = input_norm
        self.channel_order = channel_order
        self.seed = seed
        self._cache: dict[tuple[torch.device, str], tuple[torch.Tensor, ...]] = {}

    @classmethod
    def from_stats(cls, stats: dict[str, torch.Tensor], crop: int, **kwargs: object) -> "Augment":
        return cls(stats["mean"], stats["eigval"], stats["eigvec"], crop, **kwargs)  # type: ignore[arg-type]

    def _consts(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = (device, self.input_norm)
        if key not in self._cache:
            if self.input_norm == "mean_image":
                sub = self.mean  # 3×H×W, 0–255
                scale = torch.ones(3, 1, 1)
            elif self.input_norm == "mean_image_std":
                # trace of the [0, 1] RGB covariance = sum of its eigenvalues: 3 × mean variance
                sigma = 255.0 * float(self.eigval.clamp_min(0).sum() / 3) ** 0.5
                sub = self.mean
                scale = torch.full((3, 1, 1), 1.0 / max(sigma, 1e-6))
            else:  # (x/255 - m) / s  ==  (x - 255 m) / (255 s)
                sub = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand_as(self.mean) * 255.0
                scale = 1.0 / (255.0 * torch.tensor(IMAGENET_STD).view(3, 1, 1))
            # The eigen-decomposition in float64, as the colour noise is computed (see params).
            self._cache[key] = (sub.contiguous().to(device), scale.to(device), self.eigval.double().to(device),
                                self.eigvec.double().to(device))
        return self._cache[key]

    def norm_constants(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """What every crop subtracts (3×H×W, 0–255 units) and then multiplies by (3×1×1), per
        ``input_norm``: the normalisation an exported model carries inside."""
        sub, scale, _, _ = self._consts(torch.device(device))
        return sub, scale

    # -- random parameters -------------------------------------------------------------------

    def params(self, indices: torch.Tensor, epoch: int) -> tuple[CropParams, torch.Tensor]:
        """Crop/flip parameters and the per-image RGB noise (N×3, 0–255 units) for these samples,
        computed on ``indices``' device: with the indices on the GPU nothing is built on the host
        and copied (a blocking copy per parameter would stall the stream every step)."""
        keys = sample_keys(self.seed, epoch, indices)
        h, w = self.size
        span_y, span_x = h + 2 * self.pad - self.crop + 1, w + 2 * self.pad - self.crop + 1
        if self.random_crop:
            oy = (uniform(keys, _CROP_Y) * span_y).long() - self.pad
            ox = (uniform(keys, _CROP_X) * span_x).long() - self.pad
        else:
            oy = torch.full_like(keys, (h - self.crop) // 2)
            ox = torch.full_like(keys, (w - self.crop) // 2)
        flip = uniform(keys, _FLIP) < 0.5 if self.flip else torch.zeros_like(keys, dtype=torch.bool)
        if self.pca_std > 0:
            # §4.1: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T, a ~ N(0, 0.1), once per image per use.
            # Applied on the [0, 1] scale where the eigenvalues live, then to pixel units.
            alpha = torch.stack([normal(keys, _PCA + c) for c in range(3)], dim=1) * self.pca_std  # N×3
            _, _, eigval, eigvec = self._consts(keys.device)
            noise = (alpha * eigval) @ eigvec.T * 255.0
        else:
            noise = torch.zeros(len(keys), 3, dtype=torch.float64, device=keys.device)
        return CropParams(oy, ox, flip), noise

    # -- application ---------------------------------------------------------------------------

    def _crop(self, images: torch.Tensor, p: CropParams, noise: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        x = self._crop_rgb(images, p, noise, dtype)
        return x.flip(1) if self.channel_order == "bgr" else x  # N×3×S×S, B first for Caffe's networks

    def _crop_rgb(self, images: torch.Tensor, p: CropParams, noise: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        dev = images.device
        sub, scale, _, _ = self._consts(dev)
        if dev.type != "cpu" or self.pad:
            return self._crop_gather(images, p, sub, scale, noise, dtype)
        x = self._crop_loop(images, p, sub)
        if noise is not None:
            x.add_(noise.to(dev, torch.float32)[:, :, None, None])
        x.mul_(scale.view(1, 3, 1, 1))
        return x.to(dtype)

    def _crop_gather(self, images: torch.Tensor, p: CropParams, sub: torch.Tensor, scale: torch.Tensor,
                     noise: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Gathers for the whole batch (the GPU path, and padded crops), written once in ``dtype``.

        The crop's pixels are gathered as uint8 (1 byte a pixel); the mean image at those pixels
        in fp32, the one fp32 N×3×S×S intermediate (154 MB at batch 256, 224²); the subtraction,
        the colour noise, the padding mask and the scale run in place on it; the result is
        rounded once into a new ``dtype`` tensor (bf16: 2 bytes a pixel). The same operations in
        the same order as fp32 all the way and a cast at the end: the same bits. The colour noise (N×3)
        is added to the image's pixels only: the padding stays the mean."""
        n, _, h, w = images.shape
        dev = images.device
        ar = torch.arange(self.crop, device=dev)
        rows = p.oy.to(dev)[:, None] + ar  # N×S
        cols = p.ox.to(dev)[:, None] + ar  # N×S
        cols = torch.where(p.flip.to(dev)[:, None], cols.flip(1), cols)
        rows_c, cols_c = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        lin = (rows_c[:, :, None] * w + cols_c[:, None, :]).view(n, 1, -1).expand(n, 3, -1)  # flat pixel index
        x = images.reshape(n, 3, h * w).gather(2, lin)  # uint8 N×3×(S·S)
        m = sub.reshape(1, 3, h * w).expand(n, -1, -1).gather(2, lin)  # fp32 N×3×(S·S)
        torch.sub(x, m, out=m)  # x - mean, in fp32 (uint8 converts exactly)
        if noise is not None:
            m += noise.to(dev, torch.float32)[:, :, None]  # before the mask: the padding stays the mean
        if self.pad:
            valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # N×S×S
            m *= valid.view(n, 1, -1)  # padding reads as the mean (zero after subtraction)
        out = torch.empty((n, 3, self.crop * self.crop), dtype=dtype, device=dev)
        torch.mul(m, scale.view(1, 3, 1), out=out)  # computed in fp32, rounded once on the store
        return out.view(n, 3, self.crop, self.crop)  # N×3×S×S

    def _crop_loop(self, images: torch.Tensor, p: CropParams, sub: torch.Tensor) -> torch.Tensor:
        """CPU: slice each sample (views, no index tensors), subtract the mean crop into one buffer."""
        s = self.crop
        out = torch.empty((images.shape[0], 3, s, s), dtype=torch.float32)
        for i, (y, x, f) in enumerate(zip(p.oy.tolist(), p.ox.tolist(), p.flip.tolist())):
            img = images[i, :, y : y + s, x : x + s]
            m = sub[:, y : y + s, x : x + s]
            if f:
                img, m = img.flip(-1), m.flip(-1)
            torch.sub(img, m, out=out[i])
        return out

    def train(self, images: torch.Tensor, indices: torch.Tensor, epoch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Random crop + flip + PCA colour noise − mean, for a uint8 N×3×H×W batch.

        ``indices`` may be on the host: they are the step's one host-to-device transfer, queued
        without waiting (every random parameter is then derived from them on the device)."""
        p, noise = self.params(indices.to(images.device, non_blocking=True), epoch)
        return self._crop(images, p, noise if self.pca_std > 0 else None, dtype)

    def center(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The central crop (test time)."""
        n, _, h, w = images.shape
        dev = images.device
        oy = torch.full((n,), (h - self.crop) // 2, dtype=torch.long, device=dev)
        ox = torch.full((n,), (w - self.crop) // 2, dtype=torch.long, device=dev)
        return self._crop(images, CropParams(oy, ox, torch.zeros(n, dtype=torch.bool, device=dev)), None, dtype)

    def ten_crop(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """§4.1: the four corner patches and the centre patch, and their reflections: 10×N×3×S×S."""
        n, _, h, w = images.shape
        s = self.crop
        corners = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), ((h - s) // 2, (w - s) // 2)]
        views = []
        for flip in (False, True):
            for y, x in corners:
                dev = images.device
                p = CropParams(torch.full((n,), y, dtype=torch.long, device=dev), torch.full((n,), x, dtype=torch.long, device=dev),
                               torch.full((n,), flip, dtype=torch.bool, device=dev))
                views.append(self._crop(images, p, None, dtype))
        return torch.stack(views)
