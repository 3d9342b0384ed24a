"""The other sources of ``prepare``: image-folder trees (folders and archives), the extracted
ImageNet tree, CIFAR-10/100 pickles, MNIST-family IDX files, and the built-in synthetic set."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from alexnet.data import PreparedDataset
from alexnet.data.prepare import prepare
from alexnet.data.sources.detect import open_source
from alexnet.errors import UserError
from fakes_data import (COLORS, LEAVES, SORTED, WORDS, add, encode, image, jpeg, meta_mat, nearest_class, write_cifar,
                        write_idx)

CLASSES = ["cat", "dog", "emu"]
TINT = {"cat": (220, 30, 30), "dog": (30, 200, 40), "emu": (40, 60, 220)}


def make_tree(root: Path, per_class: dict[str, int], split: str | None = None, w: int = 40, h: int = 30) -> None:
    for c, n in per_class.items():
        d = root / split / c if split else root / c
        d.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            (d / f"{c}{k}.jpg").write_bytes(jpeg(w, h, TINT[c]))


def colour_labels(ds: PreparedDataset) -> None:
    for i in range(len(ds)):
        img, label = ds[i]
        c = img[:, 4:-4, 4:-4].float().reshape(3, -1).mean(1).numpy()
        assert min(TINT, key=lambda k: ((np.array(TINT[k]) - c) ** 2).sum()) == ds.classes[label]


# ---------------------------------------------------------------------------------------------
# Image-folder trees


def test_folder_train_val(tmp_path):
    make_tree(tmp_path / "src", {"cat": 3, "dog": 2, "emu": 2}, "train")
    make_tree(tmp_path / "src", {"cat": 1, "dog": 2}, "val")
    (tmp_path / "src" / "train" / "dog" / "readme.txt").write_text("not an image")
    (tmp_path / "src" / "train" / ".DS_Store").write_bytes(b"\0\1")
    out = prepare(tmp_path / "src", tmp_path / "out", size=16, workers=1, progress=False)
    tr, va = PreparedDataset(out, "train"), PreparedDataset(out, "val")
    assert tr.classes == CLASSES and tr.class_names == CLASSES
    assert np.bincount(tr.labels, minlength=3).tolist() == [3, 2, 2]
    assert np.bincount(va.labels, minlength=3).tolist() == [1, 2, 0]
    colour_labels(tr)
    colour_labels(va)
    report = json.loads((out / "prepare_report.json").read_text())
    assert [(e["file"], e["codes"]) for e in report["skipped"]] == [("train/dog/readme.txt", ["not_image"])]
    assert json.loads((out / "meta.json").read_text())["source"]["kind"] == "folder"


def test_folder_val_fraction_is_deterministic_and_stratified(tmp_path):
    make_tree(tmp_path / "src", {"cat": 10, "dog": 5, "emu": 1})
    a = prepare(tmp_path / "src", tmp_path / "a", size=12, workers=1, progress=False, val_fraction=0.2)
    b = prepare(tmp_path / "src", tmp_path / "b", size=12, workers=1, progress=False, val_fraction=0.2)
    va = PreparedDataset(a, "val")
    assert np.bincount(va.labels, minlength=3).tolist() == [2, 1, 0]  # round(0.2 n); a lone file stays in train
    assert np.bincount(PreparedDataset(a, "train").labels, minlength=3).tolist() == [8, 4, 1]
    for split in ("train", "val"):
        assert (a / split / "data.bin").read_bytes() == (b / split / "data.bin").read_bytes()
    colour_labels(va)


def test_folder_from_tgz_with_wrapper_folder_and_unsafe_member(tmp_path):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w:gz") as tf:
        for split, counts in (("train", {"cat": 2, "dog": 2}), ("val", {"cat": 1, "dog": 1})):
            for c, n in counts.items():
                for k in range(n):
                    add(tf, f"pets-320/{split}/{c}/{c}{k}.JPEG", jpeg(48, 32, TINT[c]))
        add(tf, "pets-320/noisy_labels.csv", b"path,label\n")
        add(tf, "pets-320/train/cat/../../../../evil.JPEG", jpeg(48, 32, TINT["cat"]))
    (tmp_path / "pets-320.tgz").write_bytes(b.getvalue())
    out = prepare(tmp_path / "pets-320.tgz", tmp_path / "out", size=24, workers=2, progress=False,
                  names={"cat": "house cat"})
    tr = PreparedDataset(out, "train")
    assert tr.classes == ["cat", "dog"] and tr.class_names == ["house cat", "dog"]
    assert len(tr) == 4 and len(PreparedDataset(out, "val")) == 2
    colour_labels(tr)
    report = json.loads((out / "prepare_report.json").read_text())
    assert [e["codes"] for e in report["skipped"]] == [["unsafe_path"]]
    assert not list(tmp_path.rglob("evil.JPEG"))


def test_folder_of_small_images_keeps_native_size(tmp_path):
    for c in ("cat", "dog"):
        for split in ("train", "val"):
            d = tmp_path / "src" / split / c
            d.mkdir(parents=True)
            for k in range(2):
                (d / f"{k}.png").write_bytes(encode(image(20, 20, TINT[c]), "PNG"))
    out = prepare(tmp_path / "src", tmp_path / "out", workers=1, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["image_size"] == [20, 20] and meta["splits"]["train"]["encoding"] == "raw"
    img, label = PreparedDataset(out, "val")[0]
    assert img[:, 10, 10].tolist() == list(TINT["cat"]) and label == 0  # PNG, raw: lossless


@pytest.mark.parametrize("case", ["no_val", "val_class_unknown", "both", "empty", "bad_fraction"])
def test_folder_refusals(tmp_path, case):
    src = tmp_path / "src"
    if case == "no_val":
        make_tree(src, {"cat": 2}, "train")
    elif case == "val_class_unknown":
        make_tree(src, {"cat": 2}, "train")
        make_tree(src, {"dog": 1}, "val")
    elif case == "both":
        make_tree(src, {"cat": 2}, "train")
        make_tree(src, {"cat": 1}, "val")
    elif case == "empty":
        src.mkdir()
    else:
        make_tree(src, {"cat": 2})
    frac = {"both": 0.5, "bad_fraction": 1.5}.get(case)
    with pytest.raises(UserError):
        prepare(src, tmp_path / "out", size=16, workers=1, progress=False, val_fraction=frac)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_out_inside_source_refused(tmp_path):
    make_tree(tmp_path / "src", {"cat": 2}, "train")
    with pytest.raises(UserError, match="inside"):
        prepare(tmp_path / "src", tmp_path / "src" / "prepared", size=16, progress=False)


# ---------------------------------------------------------------------------------------------
# The extracted ImageNet tree


def test_imagenet_tree_flat_val_with_devkit(tmp_path):
    src = tmp_path / "ilsvrc"
    for w in SORTED:
        (src / "train" / w).mkdir(parents=True)
        for k in range(2):
            (src / "train" / w / f"{w}_{k}.JPEG").write_bytes(jpeg(40, 30, COLORS[w]))
    ids = [3, 1, 4, 2, 1]
    wnid_of = {i: w for i, w, _ in LEAVES}
    (src / "val").mkdir()
    for n, i in enumerate(ids, 1):
        (src / "val" / f"ILSVRC2012_val_{n:08d}.JPEG").write_bytes(jpeg(40, 30, COLORS[wnid_of[i]]))
    dk = src / "ILSVRC2012_devkit_t12" / "data"
    dk.mkdir(parents=True)
    (dk / "meta.mat").write_bytes(meta_mat())
    (dk / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(map(str, ids)) + "\n")
    out = prepare(src, tmp_path / "out", size=16, workers=1, progress=False)
    va = PreparedDataset(out, "val")
    assert va.classes == SORTED and va.class_names == [WORDS[w] for w in SORTED]
    assert [va.classes[l] for l in va.labels] == [wnid_of[i] for i in ids]
    assert [nearest_class(va[i][0], va.classes) for i in range(len(va))] == [wnid_of[i] for i in ids]
    assert json.loads((out / "meta.json").read_text())["source"]["kind"] == "imagenet-tree"
    # A ground truth one line short is refused before any work.
    (dk / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(map(str, ids[:-1])) + "\n")
    with pytest.raises(UserError, match="ground truth"):
        prepare(src, tmp_path / "out2", size=16, workers=1, progress=False)
    assert not (tmp_path / "out2").exists()


def test_imagenet_tree_class_folders_named_by_synset_mapping(tmp_path):
    src = tmp_path / "tree"
    for split in ("train", "val"):
        for w in SORTED[:2]:
            (src / split / w).mkdir(parents=True)
            (src / split / w / "a.JPEG").write_bytes(jpeg(30, 30, COLORS[w]))
    (src / "LOC_synset_mapping.txt").write_text("".join(f"{w} {WORDS[w]}\n" for w in SORTED))
    out = prepare(src, tmp_path / "out", size=16, workers=1, progress=False)
    ds = PreparedDataset(out, "val")
    assert ds.classes == SORTED[:2] and ds.class_names == [WORDS[w] for w in SORTED[:2]]


# ---------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize("variant,archive", [("cifar10", True), ("cifar100", False)])
def test_cifar(tmp_path, variant, archive):
    fake = write_cifar(tmp_path / "dl", variant, archive=archive)
    out = prepare(fake["path"], tmp_path / "out", workers=1, progress=False)
    tr, va = PreparedDataset(out, "train"), PreparedDataset(out, "val")
    assert tr.classes == fake["names"] == tr.class_names
    x, y = fake["train"]
    assert len(tr) == len(y) and tr.labels.tolist() == y
    assert len(va) == len(fake["test"][1]) and va.labels.tolist() == fake["test"][1]
    assert tr.image_size == (32, 32) and tr.encoding == "raw"
    img, label = tr[7]
    assert img.shape == (3, 32, 32)
    # the row's red / green / blue planes became channels 0 / 1 / 2, rows stay rows
    assert (img[0] == label * 2).all() and (img[1] == 7 % 256).all()
    assert (img[2, :16] == 255).all() and (img[2, 16:] == 0).all()
    assert np.array_equal(tr.read_batch(range(len(tr))).numpy(), x.reshape(-1, 3, 32, 32))
    assert json.loads((out / "meta.json").read_text())["source"]["kind"] == variant


def test_cifar_found_in_parent_folder_and_upscaled_on_request(tmp_path):
    fake = write_cifar(tmp_path / "dl", "cifar10", n_train=2, n_test=2)
    out = prepare(tmp_path / "dl", tmp_path / "out", size=80, workers=1, progress=False)
    tr = PreparedDataset(out, "train")
    assert tr.image_size == (80, 80) and tr.encoding == "jpeg" and len(tr) == 10


def test_cifar_pickle_cannot_run_code(tmp_path):
    fake = write_cifar(tmp_path / "dl", "cifar10", archive=False)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (fake["path"] / "batches.meta").write_bytes(pickle.dumps({b"label_names": Evil()}, protocol=2))
    with pytest.raises(UserError, match="not allowed"):
        prepare(fake["path"], tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_padded_to_32_and_rgb(tmp_path, gz):
    fake = write_idx(tmp_path / "mnist", gz=gz)
    out = prepare(tmp_path / "mnist", tmp_path / "out", workers=1, progress=False)
    tr, va = PreparedDataset(out, "train"), PreparedDataset(out, "val")
    x, y = fake["train"]
    assert len(tr) == len(y) and tr.labels.tolist() == y.tolist()
    assert len(va) == len(fake["t10k"][1])
    assert tr.classes == [str(d) for d in range(10)]
    img, _ = tr[3]
    assert img.shape == (3, 32, 32)
    assert (img[0] == img[1]).all() and (img[1] == img[2]).all()
    assert np.array_equal(img[0, 2:30, 2:30].numpy(), x[3])
    assert img[:, :2].max() == 0 and img[:, :, 30:].max() == 0  # the 2-pixel pad is background


def test_idx_val_fraction_holds_out_part_of_train_and_leaves_the_test_set_out(tmp_path):
    fake = write_idx(tmp_path / "fashion", n_train=40, gz=False)  # 4 images of each of 10 classes
    a = prepare(tmp_path / "fashion", tmp_path / "a", workers=1, progress=False, val_fraction=0.25)
    b = prepare(tmp_path / "fashion", tmp_path / "b", workers=1, progress=False, val_fraction=0.25)
    tr, va = PreparedDataset(a, "train"), PreparedDataset(a, "val")
    x, y = fake["train"]
    assert np.bincount(va.labels, minlength=10).tolist() == [1] * 10  # round(0.25 × 4) of every class
    assert np.bincount(tr.labels, minlength=10).tolist() == [3] * 10
    # every training image is in exactly one split, and no test image is in either
    seen = [tuple(img[0, 2:30, 2:30].numpy().ravel()) for ds in (tr, va) for img, _ in (ds[i] for i in range(len(ds)))]
    assert sorted(seen) == sorted(tuple(im.ravel()) for im in x)
    assert not set(seen) & {tuple(im.ravel()) for im in fake["t10k"][0]}
    assert tr.class_names[:2] == ["T-shirt/top", "Trouser"]  # a Fashion-MNIST folder keeps its names
    for split in ("train", "val"):  # the same split on every run
        assert (a / split / "data.bin").read_bytes() == (b / split / "data.bin").read_bytes()
    meta = json.loads((a / "meta.json").read_text())["source"]
    assert "test set left out" in json.dumps(meta)
    with pytest.raises(UserError, match="between 0 and 1"):
        prepare(tmp_path / "fashion", tmp_path / "c", workers=1, progress=False, val_fraction=1.0)
    assert not (tmp_path / "c").exists()


def test_idx_label_count_mismatch_refused(tmp_path):
    write_idx(tmp_path / "mnist", gz=False)
    from fakes_data import idx_bytes

    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(UserError, match="labels"):
        prepare(tmp_path / "mnist", tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Detection, synthetic


def test_detection(tmp_path):
    write_idx(tmp_path / "m", gz=True)
    assert open_source(tmp_path / "m").kind == "idx"
    fake = write_cifar(tmp_path / "c", "cifar100")
    assert open_source(fake["path"]).kind == "cifar100"
    with pytest.raises(UserError, match="no such"):
        open_source(tmp_path / "nothing")
    (tmp_path / "f.bin").write_bytes(b"\0" * 100)
    with pytest.raises(UserError):
        open_source(tmp_path / "f.bin")
    with pytest.raises(UserError, match="--format"):
        open_source(tmp_path / "m", "pickles")


def test_synthetic_dispatch(tmp_path):
    pytest.importorskip("alexnet.data.sources.synthetic")
    out = prepare("synthetic", tmp_path / "syn", size=12, progress=False)
    ds = PreparedDataset(out, "train")
    assert ds.image_size == (12, 12) and len(ds) > 0
