"""The built-in synthetic dataset: determinism, balance, variety, and the prepared dataset it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alexnet.data import PreparedDataset, is_prepared
from alexnet.data.format import DatasetError
from alexnet.data.sources import synthetic as S
from alexnet.errors import UserError


def test_classes_are_named() -> None:
    assert S.NUM_CLASSES >= 10
    assert len(S.CLASS_NAMES) == S.NUM_CLASSES == len(S.CLASS_DESCRIPTIONS)
    assert len(set(S.CLASS_NAMES)) == S.NUM_CLASSES
    assert all(isinstance(n, str) and n for n in S.CLASS_NAMES + S.CLASS_DESCRIPTIONS)


def test_dtype_shape_and_balanced_labels() -> None:
    imgs, labels = S.generate(50, 20, seed=0)
    assert imgs.shape == (50, 20, 20, 3) and imgs.dtype == np.uint8
    assert labels.shape == (50,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=S.NUM_CLASSES).tolist() == [5] * S.NUM_CLASSES
    assert imgs.min() < 60 and imgs.max() > 200  # uses the range, not a washed-out band


def test_deterministic_from_seed_and_split() -> None:
    a, la = S.generate(20, 16, seed=7)
    b, lb = S.generate(20, 16, seed=7)
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    c, _ = S.generate(20, 16, seed=8)
    v, _ = S.generate(20, 16, seed=7, split="val")
    for other in (c, v):
        # every single image differs, not just some
        assert all(not np.array_equal(x, y) for x, y in zip(a, other))


def test_subset_order_and_chunking_independent(monkeypatch: pytest.MonkeyPatch) -> None:
    full, labels = S.generate(30, 16, seed=3)
    tail, tail_labels = S.generate(10, 16, seed=3, start=20)
    assert np.array_equal(tail, full[20:]) and np.array_equal(tail_labels, labels[20:])
    picked, picked_labels = S.render([29, 5, 17, 5], 16, seed=3)
    assert np.array_equal(picked, full[[29, 5, 17, 5]]) and np.array_equal(picked_labels, labels[[29, 5, 17, 5]])
    monkeypatch.setattr(S, "_CHUNK_PIXELS", 16 * 16 * 2)  # two images per chunk
    rechunked, _ = S.generate(30, 16, seed=3)
    assert np.array_equal(rechunked, full)


def test_colour_and_pixel_template_do_not_give_the_class() -> None:
    # Shape and background colours are drawn independently of the class, and the pose varies, so
    # classifiers on the mean colour or on raw pixels should be near chance (0.1) on held-out images.
    xtr, ytr = S.generate(400, 16, seed=1, split="train")
    xva, yva = S.generate(200, 16, seed=1, split="val")

    def nearest_centroid_accuracy(ftr: np.ndarray, fva: np.ndarray) -> float:
        cent = np.stack([ftr[ytr == c].mean(0) for c in range(S.NUM_CLASSES)])
        pred = ((fva[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)
        return float((pred == yva).mean())

    mean_colour = lambda x: x.reshape(len(x), -1, 3).mean(1)  # noqa: E731  N×3
    raw = lambda x: x.reshape(len(x), -1).astype(np.float64)  # noqa: E731  N×(H·W·3)
    assert nearest_centroid_accuracy(mean_colour(xtr), mean_colour(xva)) < 0.25
    assert nearest_centroid_accuracy(raw(xtr), raw(xva)) < 0.25
    # and the per-class mean colours are close together compared with how much images vary
    class_means = np.stack([mean_colour(xtr[ytr == c]).mean(0) for c in range(S.NUM_CLASSES)])
    spread_between = class_means.std(0).max()
    spread_within = mean_colour(xtr).std(0).min()
    assert spread_between < 0.25 * spread_within


def test_images_of_a_class_vary() -> None:
    imgs, labels = S.generate(200, 16, seed=2)
    for c in range(S.NUM_CLASSES):
        x = imgs[labels == c].astype(np.float32)  # 20×16×16×3
        # every pixel position changes a lot across the class (position, colour, background all move)
        assert x.std(0).min() > 15
        diffs = [np.abs(x[i] - x[j]).mean() for i in range(len(x)) for j in range(i + 1, len(x))]
        assert min(diffs) > 10


def test_shapes_are_distinct_under_rotation() -> None:
    # Rotation-invariant signature of each class's mask: the covered fraction of thin rings around
    # the centre. Any two classes must differ clearly, or rotation alone could make them alike.
    g = np.linspace(-1.2, 1.2, 241, dtype=np.float32)
    u, v = np.meshgrid(g, g)
    rho = np.hypot(u, v)
    bins = np.digitize(rho, np.linspace(0, 1.2, 13))
    sig = []
    for fn in S._SHAPES:
        inside = fn(u, v) < 0
        sig.append(np.array([inside[bins == k].mean() for k in range(1, 13)]))
    for i in range(S.NUM_CLASSES):
        for j in range(i + 1, S.NUM_CLASSES):
            assert np.abs(sig[i] - sig[j]).sum() > 0.5, (S.CLASS_NAMES[i], S.CLASS_NAMES[j])


def test_bad_values_are_user_errors() -> None:
    with pytest.raises(UserError):
        S.generate(5, 4, seed=0)
    with pytest.raises(UserError):
        S.generate(-1, 16, seed=0)
    with pytest.raises(UserError):
        S.generate(5, 16, seed=0, split="holdout")
    with pytest.raises(UserError):
        S.build("unused", size=16, train_per_class=0)


def test_default_size() -> None:
    assert S.default_size(32) == 36
    assert S.default_size(224) == 256
    assert S.default_size(227) % 2 == 0


def test_build_writes_a_prepared_dataset(tmp_path: Path) -> None:
    out = S.build(tmp_path / "syn", size=12, train_per_class=3, val_per_class=2, seed=5)
    assert out == tmp_path / "syn" and is_prepared(out)
    train, val = PreparedDataset(out, "train"), PreparedDataset(out, "val")
    assert len(train) == 30 and len(val) == 20
    assert train.classes == S.CLASS_NAMES and train.class_names == S.CLASS_DESCRIPTIONS
    img, label = train[4]
    assert tuple(img.shape) == (3, 12, 12) and label == 4
    expected, _ = S.generate(30, 12, seed=5)
    assert np.array_equal(train.read_batch(range(30)).permute(0, 2, 3, 1).numpy(), expected)
    # val holds different images from train
    val_imgs = val.read_batch(range(20)).numpy()
    train_imgs = train.read_batch(range(30)).numpy()
    assert not any(np.array_equal(a, b) for a in val_imgs for b in train_imgs)
    stats = train.stats()
    assert tuple(stats["mean"].shape) == (3, 12, 12)
    assert np.allclose(stats["mean"].numpy(), expected.mean(0).transpose(2, 0, 1), atol=1e-3)
    assert tuple(stats["eigval"].shape) == (3,) and tuple(stats["eigvec"].shape) == (3, 3)
    source = json.loads((out / "meta.json").read_text())["source"]
    assert source["type"] == "synthetic" and source["seed"] == 5 and source["size"] == 12
    assert source["train_per_class"] == 3 and source["val_per_class"] == 2


def test_cached_builds_once_and_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    first = S.cached(8, seed=1, train_per_class=2, val_per_class=1)
    assert first.parent == tmp_path / "cache" and is_prepared(first)
    assert PreparedDataset(first, "train").image_size == (S.default_size(8),) * 2
    meta_mtime = (first / "meta.json").stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("cached() regenerated an existing dataset")

    monkeypatch.setattr(S, "generate", fail)
    assert S.cached(8, seed=1, train_per_class=2, val_per_class=1) == first
    assert (first / "meta.json").stat().st_mtime_ns == meta_mtime
    # other parameters mean another folder
    with pytest.raises(AssertionError):
        S.cached(8, seed=2, train_per_class=2, val_per_class=1)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [first.name]  # no staging left behind


def test_cached_when_another_process_finishes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_build = S.build
    target = tmp_path / f"synthetic-v{S.GENERATOR_VERSION}-s10-seed0-2-1"

    def racing_build(out: Path, **kw: int) -> Path:
        real_build(target, **kw)  # the other process completes while we are still drawing
        return real_build(out, **kw)

    monkeypatch.setattr(S, "build", racing_build)
    got = S.cached(8, seed=0, train_per_class=2, val_per_class=1, root=tmp_path)
    assert got == target and len(PreparedDataset(got, "train")) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_cached_refuses_a_foreign_folder(tmp_path: Path) -> None:
    target = tmp_path / f"synthetic-v{S.GENERATOR_VERSION}-s10-seed0-2-1"
    target.mkdir()
    (target / "something.txt").write_text("not a dataset")
    with pytest.raises(DatasetError):
        S.cached(8, seed=0, train_per_class=2, val_per_class=1, root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
