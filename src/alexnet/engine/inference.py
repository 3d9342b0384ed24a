"""Load trained models (a run folder or a weights file) and the augmentation they were trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alexnet import models
from alexnet.data.augment import Augment
from alexnet.data.format import PreparedDataset
from alexnet.data.decode import read_image as read_rgb
from alexnet.data.resolve import resolve_data
from alexnet.data.sources.base import WNID_RE
from alexnet.engine import checkpoint as ckpt
from alexnet.engine.checks import same_classes
from alexnet.engine.torchvision_weights import load_torchvision
from alexnet.errors import UserError


@dataclass
class Trained:
    """A trained network as :func:`load` returns it.

    Attributes:
        model: The network, in eval mode.
        meta: What the weights say about it (see the comment below).
        source: The path it was loaded from.
        stats: The training set's mean image and RGB PCA, if the file has them.
    """

    model: nn.Module
    # model, model_options, num_classes, classes, class_names, input_size, input_norm, data; and for
    # imported weights channel_order ("bgr": Caffe's) and input_mean ("weights": the network
    # subtracts the mean stored with its weights, not a dataset's; see :func:`input_stats`)
    meta: dict[str, Any]
    source: Path
    stats: dict[str, torch.Tensor] | None = None  # the training set's mean image and RGB PCA, if the file has them

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or self.meta.get("classes") or [str(i) for i in range(self.meta["num_classes"])])


def weights_path(path: Path) -> Path:
    if path.is_dir():
        w = path / ckpt.WEIGHTS
        if not w.is_file():
            raise UserError(f"{path}: no {ckpt.WEIGHTS} (the run has not finished; evaluate a finished run or resume it)")
        return w
    if not path.exists():
        raise UserError(f"{path}: no such run folder or weights file")
    return path


def load(path: str | Path, device: torch.device | str = "cpu") -> Trained:
    """Load a trained network with what it was trained on.

    Args:
        path: A run folder, a ``.safetensors`` file written by this project (or a Hugging Face
            folder of ``alexnet export --format hub``), or torchvision's ``alexnet-owt-*.pth``.
        device: Where to put the network.

    Returns:
        The :class:`Trained` network (eval mode), its metadata and the training set's statistics.

    Raises:
        UserError: A missing or unfinished run, or a file that is not weights of a known model.
    """
    p = weights_path(Path(path))
    stats = None
    if p.suffix in (".pth", ".pt"):
        model, meta = load_torchvision(p)
    else:
        sd, stats, meta = ckpt.read_model_weights(p)
        model = ckpt.model_from_weights(meta, sd, p)
    model.to(device).eval()
    return Trained(model, meta, Path(path), stats)


def imagenet_order_only(meta: dict[str, Any]) -> bool:
    """Weights whose outputs are known only as ILSVRC-2012's classes in sorted-WNID order, their
    identifiers being names: torchvision's, and Caffe's imported without its synset file."""
    if meta.get("source") == "torchvision":
        return True
    return meta.get("source") == "caffe" and not all(WNID_RE.match(str(c)) for c in meta.get("classes") or [])


def check_classes(trained: Trained, ds: PreparedDataset) -> None:
    """A model meets a dataset: the same classes in the same order, or one line naming both
    (weights that record class names, not WNIDs: see ``alexnet evaluate``'s check)."""
    if not imagenet_order_only(trained.meta):
        same_classes(trained.meta.get("classes"), trained.source, ds.classes, ds.root)


def input_stats(trained: Trained, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The statistics stored with the weights, for images of ``size``: a mean image of another
    size only where it is one value per channel (Caffe's 104, 117, 123), which any size holds."""
    if trained.stats is None:
        raise UserError(f"{trained.source}: holds no mean image, which the model subtracts from its input")
    mean = trained.stats["mean"]  # 3×H×W at the stored image size
    if tuple(mean.shape[-2:]) != size:
        flat = mean.reshape(3, -1)
        if not bool((flat == flat[:, :1]).all()):
            raise UserError(f"{trained.source}: its stored mean image is {mean.shape[-2]}×{mean.shape[-1]}, "
                            f"the images are {size[0]}×{size[1]}")
        mean = flat[:, :1].reshape(3, 1, 1).expand(3, *size).contiguous()
    return {**trained.stats, "mean": mean}


def augment_for(trained: Trained, ds: PreparedDataset) -> Augment:
    """Test-time crops with the dataset's mean image (or, for imported weights, the one stored
    with them) and the model's input normalisation and channel order, for a model and a dataset
    that agree on their classes (:func:`check_classes`)."""
    check_classes(trained, ds)
    stats = input_stats(trained, tuple(ds.image_size)) if trained.meta.get("input_mean") == "weights" else ds.stats()
    return Augment.from_stats(stats, trained.meta.get("input_size", models.info(trained.meta["model"]).input_size),
                              input_norm=trained.meta.get("input_norm", "mean_image"),
                              channel_order=trained.meta.get("channel_order", "rgb"))


# -- images from files (predict, neighbors) -------------------------------------------------------


def image_size_for(trained: Trained) -> tuple[int, int]:
    """The size the model's data was stored at (§2: 256×256 for 224×224 crops): the size its test
    crops are cut from."""
    size = trained.meta.get("image_size")
    if size:
        return int(size[0]), int(size[-1])
    s = round(int(trained.meta.get("input_size", 224)) * 256 / 224)
    return s, s


def read_image(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """An image file as the prepared data stores it (§2): shorter side rescaled to the stored size,
    then the central patch cropped; uint8 3×H×W. Missing, non-image or truncated files raise a
    UserError naming the file."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    rgb = read_rgb(path)  # the same decoding and colour conversion as prepare
    h, w = size
    # The same resize and crop as torchvision's ImageClassification preset (on PIL images), so
    # torchvision's weights see what they were trained to see.
    rgb = TF.resize(rgb, max(h, w), interpolation=InterpolationMode.BILINEAR, antialias=True)
    rgb = TF.center_crop(rgb, [h, w])
    return TF.pil_to_tensor(rgb)  # uint8 3×H×W


def file_augment(trained: Trained, data: str | None = None) -> Augment:
    """Test-time crops for images read from files. Networks normalised with fixed per-channel
    statistics (torchvision's) need no dataset; those trained on mean-image-subtracted input (§2)
    need the mean image of their training set: ``data``, else the statistics stored in the weights
    file, else the dataset recorded in the run."""
    size = image_size_for(trained)
    input_size = int(trained.meta.get("input_size", models.info(trained.meta["model"]).input_size))
    norm = trained.meta.get("input_norm", "mean_image")
    order = trained.meta.get("channel_order", "rgb")
    if norm == "mean_std":
        stats = {"mean": torch.zeros(3, *size), "eigval": torch.zeros(3), "eigvec": torch.eye(3)}
        return Augment.from_stats(stats, input_size, input_norm=norm, channel_order=order)
    if data is None and trained.stats is not None:
        return Augment.from_stats(input_stats(trained, size), input_size, input_norm=norm, channel_order=order)
    spec = data or trained.meta.get("data")
    if not spec:
        raise UserError(f"{trained.source}: the model subtracts its training set's mean image; pass --data with that dataset")
    try:
        ds = PreparedDataset(resolve_data(spec, input_size), "train")
    except UserError as e:
        raise UserError(f"{e} (the model needs its training set's mean image: pass --data)") from None
    if tuple(ds.image_size) != size:
        raise UserError(f"{spec}: images are {ds.image_size[0]}×{ds.image_size[1]}, the model was trained on {size[0]}×{size[1]}")
    return augment_for(trained, ds)


class ImageClassifier(nn.Module):
    """A trained network with its test-time preprocessing inside, for exports that run without
    this package: uint8 RGB images N×3×H×W at the size the training data was stored at (§2:
    shorter side rescaled to 256, central 256×256 patch) in, class probabilities N×C out. Inside:
    the central crop, the normalisation the network was trained with (§2: minus the training set's
    mean image), the channel order the network reads (Caffe's: BGR), the network and the softmax,
    computed as :meth:`Augment.center` and :func:`alexnet.engine.evaluate.predict_probs` compute
    them, so the top-5 equals ``alexnet predict``'s."""

    def __init__(self, model: nn.Module, augment: Augment) -> None:
        super().__init__()
        h, w = augment.size
        s = augment.crop
        self.image_size, self.crop = (h, w), s
        self.top, self.left = (h - s) // 2, (w - s) // 2
        sub, scale = augment.norm_constants()
        self.register_buffer("mean_crop", sub[:, self.top : self.top + s, self.left : self.left + s].clone())
        self.register_buffer("scale", scale.view(1, 3, 1, 1).clone())
        self.bgr = augment.channel_order == "bgr"
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = self.crop
        x = images[:, :, self.top : self.top + s, self.left : self.left + s].float()
        x = (x - self.mean_crop) * self.scale
        if self.bgr:  # normalised as RGB, then read in the network's order (Augment's crops do the same)
            x = x.flip(1)
        return F.softmax(self.model(x).float(), dim=1)


def image_classifier(trained: Trained, data: str | None = None) -> ImageClassifier:
    """The network with its test-time preprocessing inside (what the ONNX and ``.pt2`` exports hold).

    Args:
        trained: What :func:`load` returned.
        data: A prepared dataset whose mean image to use when the weights carry none
            (see :func:`file_augment`).

    Returns:
        An :class:`ImageClassifier` in eval mode: uint8 images in, probabilities out.
    """
    return ImageClassifier(trained.model, file_augment(trained, data)).eval()
