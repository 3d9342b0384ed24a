"""Settings that cannot take effect on the data at hand: refused with one line, or warned about.

:func:`alexnet.config.TrainConfig.validate` checks each field on its own (types, ranges). What
can only be judged once the dataset is known lives here: a random crop of a 32×32 image to a
32×32 input has a single offset, PCA colour noise needs a non-zero RGB covariance, the 10-crop
of an image as large as the input is its centre crop five times. A setting that would silently do
nothing is refused (:class:`~alexnet.errors.UserError`: exit 2, one line naming the field, its
value and the reason) when the user asked for an effect that cannot happen, and warned about when
it is merely inert (a recipe default that this data or schedule does not use).
"""

from __future__ import annotations

from typing import Sequence

from alexnet.config import TrainConfig
from alexnet.errors import UserError

# Below this total variance ([0, 1] scale, sum of the RGB eigenvalues) the PCA noise is nil: a
# 0.1-sigma draw moves a pixel by less than 1e-6 of a grey level.
_NO_VARIANCE = 1e-12


def crop_offsets(image_size: Sequence[int], crop: int, padding: int) -> tuple[int, int]:
    """How many distinct random-crop positions each axis offers (rows, columns)."""
    h, w = int(image_size[0]), int(image_size[-1])
    return max(0, h + 2 * padding - crop + 1), max(0, w + 2 * padding - crop + 1)


def effective_crop_padding(cfg: TrainConfig, image_size: Sequence[int], crop: int) -> int:
    """``crop_padding`` is for images stored at the network's input size (CIFAR-10's 32×32), which
    leave a random crop no room to move: they are padded by that many pixels (with the mean image's
    border value, zero after mean subtraction) before the crop. Images stored larger than the input
    (§2's 256 for 224; the built-in data's 36 for 32) translate within their own margin and are not
    padded. No padding without random crops."""
    h, w = int(image_size[0]), int(image_size[-1])
    if not cfg.random_crop or cfg.crop_padding <= 0 or min(h, w) > crop:
        return 0
    return cfg.crop_padding


def describe_augmentation(cfg: TrainConfig, image_size: Sequence[int], crop: int) -> str:
    """One line saying what the training augmentation does on this data (logged at the start of a run)."""
    h, w = int(image_size[0]), int(image_size[-1])
    parts = []
    if cfg.random_crop:
        pad = effective_crop_padding(cfg, image_size, crop)
        ny, nx = crop_offsets(image_size, crop, pad)
        where = f"{h}×{w} images padded by {pad}" if pad else f"{h}×{w} images"
        why = (f"; crop_padding={cfg.crop_padding} is for images stored at the input size"
               if cfg.crop_padding > 0 and not pad else "")
        parts.append(f"random {crop}×{crop} crops of {where} ({ny}×{nx} offsets{why})")
    else:
        parts.append(f"the centre {crop}×{crop} crop of {h}×{w} images")
    if cfg.flip:
        parts.append("horizontal flips")
    if cfg.pca_std > 0:
        parts.append(f"PCA colour noise (alpha ~ N(0, {cfg.pca_std:g}))")
    return "augmentation: " + ", ".join(parts)


def check_ten_crop(image_size: Sequence[int], crop: int) -> None:
    """§4.1's 10-crop needs images larger than the crop: otherwise its four corner patches are the
    centre patch and the "10-crop" is the centre crop and its reflection under another name."""
    h, w = int(image_size[0]), int(image_size[-1])
    if h <= crop and w <= crop:
        raise UserError(f"ten_crop=true cannot take effect: images are {h}×{w}, the size of the {crop}×{crop} input, so the "
                        f"four corner crops equal the centre crop (it would be the centre crop and its reflection); "
                        f"evaluate the centre crop, or prepare the data larger than the input")


def check_against_data(cfg: TrainConfig, *, image_size: Sequence[int], input_size: int, eigval: object = None,
                       train_images: int | None = None, channels: int = 3) -> list[str]:
    """Refuse (``UserError``) what cannot take effect on this data; return warnings (one line each)
    for settings that are inert here. ``eigval``: the training set's RGB eigenvalues (None: no
    statistics); ``train_images``: the size of the training split."""
    import torch

    warnings: list[str] = []
    h, w = int(image_size[0]), int(image_size[-1])
    size = f"{h}×{w}"
    if min(h, w) < input_size:
        raise UserError(f"images are {size}, smaller than the {input_size}×{input_size} input of {cfg.model}; prepare the "
                        f"data at a larger size or pick a model for this size")

    chosen = cfg.model_options.get("input_size")
    if chosen is not None and chosen != input_size:
        # The crop the loop cuts is the registry's (engine/train.py); a network built for another
        # size (Caffe's 227) would fail at fc6, after the data is loaded.
        raise UserError(f"model option input_size={chosen}: training crops are {input_size}×{input_size} for {cfg.model}; "
                        f"networks of another input size (Caffe's 227) are imported (alexnet import caffe), not trained")

    # -- augmentation (§4.1) -----------------------------------------------------------------------
    pad = effective_crop_padding(cfg, image_size, input_size)
    if cfg.random_crop and crop_offsets(image_size, input_size, pad) == (1, 1):
        raise UserError(f"random_crop=true cannot take effect: images are {size}, the size of the {input_size}×{input_size} "
                        f"input, and crop_padding={cfg.crop_padding}, so the only crop is the whole image; set crop_padding "
                        f"(e.g. 4, as the cifar recipe does) or random_crop=false")
    if cfg.crop_padding > 0 and not cfg.random_crop:
        warnings.append(f"crop_padding={cfg.crop_padding} has no effect: random_crop=false (only random crops are padded)")
    if cfg.pca_std > 0:
        total = float(torch.as_tensor(eigval).clamp_min(0).sum()) if eigval is not None else 0.0
        if not total > _NO_VARIANCE:
            why = "the dataset has no RGB statistics" if eigval is None else "the training set's RGB covariance is zero"
            raise UserError(f"pca_std={cfg.pca_std} cannot take effect: {why}, so the colour noise along its principal "
                            f"components is nil; set pca_std=0")
    if cfg.ten_crop:
        check_ten_crop(image_size, input_size)
    in_ch = cfg.model_options.get("in_channels", 3)
    if in_ch != channels:
        raise UserError(f"model option in_channels={in_ch} does not fit the data: prepared images have {channels} channels "
                        f"(grayscale sources are stored as RGB)")

    # -- optimiser and schedule (§5) --------------------------------------------------------------
    if cfg.weight_decay_biases and cfg.weight_decay == 0:
        warnings.append("weight_decay_biases=true has no effect: weight_decay=0")
    if cfg.optimizer == "nesterov" and cfg.momentum <= 0:
        raise UserError(f"optimizer=nesterov cannot take effect with momentum={cfg.momentum}: Nesterov's look-ahead needs "
                        f"momentum > 0; set momentum or optimizer=sgd")
    if cfg.optimizer != "lars" and cfg.lars_eta != TrainConfig.lars_eta:
        warnings.append(f"lars_eta={cfg.lars_eta} has no effect with optimizer={cfg.optimizer} (only optimizer=lars uses it)")
    if cfg.schedule == "step" and not cfg.step_epochs:
        raise UserError("schedule=step cannot take effect: step_epochs is empty (the rate would never change); "
                        "set step_epochs (e.g. [30, 60]) or schedule=constant")
    if cfg.step_epochs and cfg.schedule != "step":
        warnings.append(f"step_epochs={list(cfg.step_epochs)} has no effect with schedule={cfg.schedule} (only schedule=step uses it)")
    if cfg.schedule == "step":
        late = [e for e in cfg.step_epochs if e >= cfg.epochs]
        if late:
            warnings.append(f"step_epochs {', '.join(map(str, late))} ≥ epochs={cfg.epochs}: those rate drops never happen")
    if cfg.schedule in ("step", "plateau") and cfg.lr_drop_factor == 1:
        warnings.append(f"lr_drop_factor=1 has no effect: schedule={cfg.schedule} never changes the rate")
    if cfg.schedule == "plateau" and cfg.max_lr_drops == 0:
        warnings.append("max_lr_drops=0: schedule=plateau never drops the rate (a constant schedule)")
    if cfg.min_lr and cfg.schedule not in ("cosine", "poly"):
        warnings.append(f"min_lr={cfg.min_lr} has no effect with schedule={cfg.schedule} (only schedule=cosine and poly use it)")
    if cfg.warmup_epochs >= cfg.epochs:
        warnings.append(f"warmup_epochs={cfg.warmup_epochs} ≥ epochs={cfg.epochs}: the whole run is warm-up, the schedule never starts")

    # -- data size ------------------------------------------------------------------------------------
    if train_images is not None and cfg.train_subset > train_images:
        warnings.append(f"train_subset={cfg.train_subset} exceeds the {train_images} training images: all of them are used")
    return warnings


def _shown(name: object) -> str:
    s = repr(str(name))
    return s if len(s) <= 60 else s[:57] + "...'"


def same_classes(mine: Sequence[object] | None, what: object, theirs: Sequence[object] | None, other: object) -> None:
    """A model and a dataset (or two models) must agree on their classes, in order: output unit i
    is scored as class i, so counts that match are not enough. Refuses a mismatch in one line
    naming both and the first class that differs; does nothing where either side records none."""
    if mine is None or theirs is None:
        return
    a, b = [str(c) for c in mine], [str(c) for c in theirs]
    if a == b:
        return
    if len(a) != len(b):
        detail = f"{len(a)} classes in {what}, {len(b)} in {other}"
    else:
        i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        detail = f"class {i} is {_shown(a[i])} in {what} but {_shown(b[i])} in {other}"
        if sorted(a) == sorted(b):
            detail += " (the same classes in another order)"
    raise UserError(f"{what} and {other} do not agree on their classes: {detail}; "
                    f"a model and a dataset must agree on their classes")
