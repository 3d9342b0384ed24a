"""``alexnet predict`` on image files: JSON structure, bad files, torchvision's AlexNet weights
(predictions equal torchvision's own model, evaluation class-order checks) and refusal of a
``.pth`` that would run code when unpickled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from alexnet import models
from alexnet.cli import main
from alexnet.data.sources import synthetic
from alexnet.data.writer import write_arrays
from alexnet.engine.checkpoint import save_weights
from alexnet.engine.inference import file_augment, load, read_image


def _smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB picture (uint8 H×W×3): resizing it is well conditioned."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny synthetic dataset, an untrained alexnet-cifar saved as a run, and image files."""
    root = tmp_path_factory.mktemp("predict")
    data = synthetic.build(root / "data", size=36, train_per_class=2, val_per_class=1)
    torch.manual_seed(0)
    model = models.create("alexnet-cifar", 10)
    with torch.no_grad():
        model.classifier[-1].weight.mul_(20)  # spread the softmax so the ranking means something
    run = root / "run"
    run.mkdir()
    meta = {"model": "alexnet-cifar", "model_options": {}, "num_classes": 10, "classes": synthetic.CLASS_NAMES,
            "class_names": synthetic.CLASS_DESCRIPTIONS, "input_size": 32, "input_norm": "mean_image_std",
            "data": str(data), "image_size": [36, 36]}
    save_weights(model, run / "model.safetensors", meta)
    Image.fromarray(_smooth_image(50, 70, 1)).save(root / "a.png")
    Image.fromarray(_smooth_image(90, 40, 2)).save(root / "b.jpg", quality=95)
    return {"root": root, "data": data, "run": run, "images": [root / "a.png", root / "b.jpg"]}


def _json(capsys, argv: list[str]) -> object:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_json_structure_and_values(tiny, capsys):
    imgs = [str(p) for p in tiny["images"]]
    out = _json(capsys, ["predict", str(tiny["run"]), *imgs, "--json", "--device", "cpu"])
    assert isinstance(out, list) and [o["image"] for o in out] == imgs
    # Reference: the model applied to the centre crop of each file, computed here step by step.
    trained = load(tiny["run"])
    aug = file_augment(trained)
    x = torch.stack([read_image(p, (36, 36)) for p in imgs])
    assert x.dtype == torch.uint8 and x.shape == (2, 3, 36, 36)
    with torch.no_grad():
        ref = F.softmax(trained.model(aug.center(x)), dim=1)
    for o, r in zip(out, ref):
        top = o["top5"]
        assert len(top) == 5 and all(set(e) == {"index", "label", "name", "prob"} for e in top)
        probs = [e["prob"] for e in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6 and probs[0] > 0
        assert [e["index"] for e in top] == r.topk(5).indices.tolist()
        np.testing.assert_allclose(probs, r.topk(5).values.numpy(), rtol=1e-5, atol=1e-7)
        for e in top:  # index, label and name all name the same class
            assert e["label"] == synthetic.CLASS_NAMES[e["index"]]
            assert e["name"] == synthetic.CLASS_DESCRIPTIONS[e["index"]]


def test_predict_top_and_ten_crop(tiny, capsys):
    img = str(tiny["images"][0])
    out = _json(capsys, ["predict", str(tiny["run"]), img, "--json", "--top", "3", "--ten-crop", "--device", "cpu"])
    trained = load(tiny["run"])
    aug = file_augment(trained)
    with torch.no_grad():
        views = aug.ten_crop(read_image(img, (36, 36))[None])  # 10×1×3×32×32
        ref = F.softmax(trained.model(views[:, 0]), dim=1).mean(0)  # §4.1: mean softmax of the 10 patches
    top = out[0]["top5"]
    assert [e["index"] for e in top] == ref.topk(3).indices.tolist()
    np.testing.assert_allclose([e["prob"] for e in top], ref.topk(3).values.numpy(), rtol=1e-5)
    # Text output: one header line per image and K ranked lines.
    assert main(["predict", str(tiny["run"]), img, "--top", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == img and len(lines) == 3 and lines[1].lstrip().startswith("1.")


def _bad_files(root: Path) -> dict[str, Path]:
    png = (root / "a.png").read_bytes()
    jpg = (root / "b.jpg").read_bytes()
    (root / "text.png").write_text("not an image\n")
    (root / "cut.png").write_bytes(png[: len(png) // 2])
    (root / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    return {"missing": root / "missing.jpg", "text": root / "text.png", "cut_png": root / "cut.png", "cut_jpg": root / "cut.jpg"}


def test_bad_images_exit_2_with_one_line(tiny, capsys):
    for kind, bad in _bad_files(tiny["root"]).items():
        rc = main(["predict", str(tiny["run"]), str(tiny["images"][0]), str(bad), "--json", "--device", "cpu"])
        cap = capsys.readouterr()
        assert rc == 2, kind
        assert cap.out == "", kind  # nothing printed for the good image either
        lines = cap.err.strip().splitlines()
        assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in cap.err, (kind, cap.err)


def test_bad_image_via_subprocess_no_traceback(tiny):
    bad = _bad_files(tiny["root"])["cut_jpg"]
    r = subprocess.run([sys.executable, "-m", "alexnet", "predict", str(tiny["run"]), str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and str(bad) in r.stderr and "truncated" in r.stderr


# -- torchvision's weights ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tv_weights(tmp_path_factory):
    """A .pth laid out as torchvision's alexnet-owt-7be5be79.pth (a plain state_dict), random
    weights with a sharpened last layer."""
    import torchvision

    torch.manual_seed(1)
    tv = torchvision.models.alexnet()
    with torch.no_grad():
        tv.classifier[6].weight.mul_(50)
    path = tmp_path_factory.mktemp("tv") / "alexnet-owt-test.pth"
    torch.save(tv.state_dict(), path)
    return path, tv.eval()


def test_torchvision_pth_predicts_like_torchvision(tiny, tv_weights, capsys):
    from torchvision.models import AlexNet_Weights

    path, tv = tv_weights
    imgs = [str(p) for p in tiny["images"]]
    out = _json(capsys, ["predict", str(path), *imgs, "--json", "--device", "cpu"])
    weights = AlexNet_Weights.IMAGENET1K_V1
    preprocess = weights.transforms()  # resize 256, centre crop 224, ImageNet mean/std
    x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in imgs])
    with torch.no_grad():
        ref = F.softmax(tv(x), dim=1)
    # The same preprocessed input, from our own pipeline:
    trained = load(path)
    ours = file_augment(trained).center(torch.stack([read_image(p, (256, 256)) for p in imgs]))
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
    cats = weights.meta["categories"]
    for o, r in zip(out, ref):
        top = o["top5"]
        assert [e["index"] for e in top] == r.topk(5).indices.tolist()
        np.testing.assert_allclose([e["prob"] for e in top], r.topk(5).values.numpy(), rtol=1e-4, atol=1e-6)
        assert [e["name"] for e in top] == [cats[e["index"]] for e in top]
        assert [e["label"] for e in top] == [e["name"] for e in top]


def test_torchvision_pth_evaluate_and_class_order(tmp_path, tv_weights, capsys):
    from torchvision.models import AlexNet_Weights

    path, tv = tv_weights
    g = np.random.default_rng(3)
    n = 6
    images = np.stack([_smooth_image(256, 256, s) for s in range(n)])  # N×256×256×3, as ImageNet is prepared
    # Labels are the classes the network itself predicts for half the images: a known top-1 error.
    preprocess = AlexNet_Weights.IMAGENET1K_V1.transforms()
    with torch.no_grad():
        pred = tv(torch.stack([preprocess(Image.fromarray(im)) for im in images])).argmax(1).numpy()
    labels = np.where(np.arange(n) % 2 == 0, pred, (pred + 1) % 1000)
    wnids = sorted(f"n{int(v):08d}" for v in g.choice(10**8, 1000, replace=False))
    ds = write_arrays(tmp_path / "imagenet", {"train": (images, labels), "val": (images, labels)}, classes=wnids)
    out = _json(capsys, ["evaluate", str(path), "--data", str(ds), "--json", "--device", "cpu", "--workers", "0"])
    assert out["n"] == n and out["top1_err"] == pytest.approx(0.5)
    # Classes not in sorted-WNID order, or not WNIDs, or not 1000 of them: refused with one line.
    for name, classes, sub in [("unsorted", wnids[::-1], "sorted"), ("names", [f"c{i}" for i in range(1000)], "WNID"),
                               ("ten", [f"n{i:08d}" for i in range(10)], "1000")]:
        lab = labels % len(classes)
        bad = write_arrays(tmp_path / name, {"train": (images, lab), "val": (images, lab)}, classes=classes)
        assert main(["evaluate", str(path), "--data", str(bad), "--device", "cpu", "--workers", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and sub in err[0], err


class _Evil:
    """Unpickling this object calls os.mkdir(marker): code run by loading a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_malicious_pth_is_refused_and_never_runs(tiny, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "alexnet-owt-evil.pth"
    torch.save({"classifier.6.weight": _Evil(marker)}, evil)
    for cmd in (["predict", str(evil), str(tiny["images"][0])], ["evaluate", str(evil), "--data", str(tiny["data"])],
                ["export", str(evil), "--format", "safetensors", "--out", str(tmp_path / "x.safetensors")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(evil) in err[0] and "refused" in err[0], err
        assert not marker.exists()
    # The file really does run code when unpickled without weights_only (the test is meaningful).
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_pth_that_is_not_alexnet(tmp_path, tiny, capsys):
    p = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 4)}, p)
    assert main(["predict", str(p), str(tiny["images"][0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classifier.6.weight" in err[0]


def test_weights_carry_the_training_stats_so_predict_needs_no_dataset(tiny, tmp_path, capsys):
    # A weights file sent to someone without the dataset: the mean image travels inside it.
    from alexnet.data.format import PreparedDataset
    from alexnet.engine.checkpoint import read_weights

    img = str(tiny["images"][0])
    with_data = _json(capsys, ["predict", str(tiny["run"]), img, "--json", "--device", "cpu"])
    trained = load(tiny["run"])
    stats = PreparedDataset(tiny["data"], "train").stats()
    alone = tmp_path / "alone.safetensors"
    save_weights(trained.model, alone, {**trained.meta, "data": str(tmp_path / "gone")}, stats)
    sd, _ = read_weights(alone)
    assert set(k for k in sd if k.startswith("_data_stats.")) == {"_data_stats.mean", "_data_stats.eigval", "_data_stats.eigvec"}
    out = _json(capsys, ["predict", str(alone), img, "--json", "--device", "cpu"])
    assert [t["label"] for t in out[0]["top5"]] == [t["label"] for t in with_data[0]["top5"]]
    for a, b in zip(out[0]["top5"], with_data[0]["top5"]):
        assert a["prob"] == pytest.approx(b["prob"], abs=1e-6)
    # Without the stats and without the dataset it is one clear line, exit 2.
    bare = tmp_path / "bare.safetensors"
    save_weights(trained.model, bare, {**trained.meta, "data": str(tmp_path / "gone")})
    assert main(["predict", str(bare), img, "--device", "cpu"]) == 2
    assert "mean image" in capsys.readouterr().err


def test_weights_whose_metadata_cannot_rebuild_the_model_are_one_line(tiny, tmp_path, capsys):
    # The same check for this project's files as for torchvision's: metadata that names no class
    # count, or an option the model does not take, is one line naming the file, exit 2.
    img = str(tiny["images"][0])
    trained = load(tiny["run"])
    for name, meta in (("no-classes", {k: v for k, v in trained.meta.items() if k != "num_classes"}),
                       ("bad-option", {**trained.meta, "model_options": {"bogus": 1}})):
        bad = tmp_path / f"{name}.safetensors"
        save_weights(trained.model, bad, meta)
        assert main(["predict", str(bad), img, "--device", "cpu"]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{bad}: weights do not fit model" in err, (name, err)
