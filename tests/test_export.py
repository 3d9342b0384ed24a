"""Self-contained exports: uint8 images at the stored size in, probabilities out, the centre crop
and the mean image inside; onnxruntime alone (with Pillow to read and size the file) gives the
top-5 of ``alexnet predict``. torch.export (.pt2) replaces TorchScript."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import models
from alexnet.cli import main
from alexnet.data.augment import Augment
from alexnet.engine.checkpoint import save_weights
from alexnet.engine.evaluate import Precision, predict_probs
from alexnet.engine.inference import ImageClassifier, load

CLASSES = [f"c{i}" for i in range(10)]


def random_stats(size: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 3, generator=g)
    eigval, eigvec = torch.linalg.eigh(a @ a.T / 30)
    return {"mean": torch.rand(3, size, size, generator=g) * 255, "eigval": eigval.flip(0), "eigvec": eigvec.flip(1)}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alexnet-cifar with the training set's statistics in the file, as a finished run leaves it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    meta = {"model": "alexnet-cifar", "model_options": {}, "num_classes": 10, "classes": CLASSES,
            "class_names": [f"name {c}" for c in CLASSES], "input_size": 32, "input_norm": "mean_image_std",
            "data": None, "image_size": [36, 36]}
    save_weights(models.create("alexnet-cifar", 10), path, meta, random_stats(36))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Photos of other sizes and aspect ratios than the stored 36×36, one greyscale."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w, mode) in enumerate([(40, 50, "RGB"), (120, 64, "RGB"), (36, 36, "L")]):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        p = root / f"img{i}.png"
        Image.fromarray(a).convert(mode).save(p)
        out.append(p)
    return out


def pillow_input(path: Path, size: int) -> np.ndarray:
    """What a user without this package does: shorter side to ``size`` (bilinear), central square."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1).copy()  # 3×H×W uint8


def predicted(capsys, weights: Path, images: list[Path]) -> list[list[tuple[int, float]]]:
    assert main(["predict", str(weights), *map(str, images), "--json"]) == 0
    return [[(e["index"], e["prob"]) for e in r["top5"]] for r in json.loads(capsys.readouterr().out)]


def assert_same_top5(probs: np.ndarray, expected: list[list[tuple[int, float]]]) -> None:
    for row, top in zip(probs, expected):
        assert list(np.argsort(-row, kind="stable")[:5]) == [i for i, _ in top]
        np.testing.assert_allclose([row[i] for i, _ in top], [p for _, p in top], rtol=1e-5, atol=1e-6)


def test_onnxruntime_alone_predicts_what_alexnet_predict_does(weights, images, tmp_path, capsys) -> None:
    ort = pytest.importorskip("onnxruntime")
    expected = predicted(capsys, weights, images)
    out = tmp_path / "m.onnx"
    assert main(["export", str(weights), "--format", "onnx", "--out", str(out)]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["alexnet"])
    assert meta["classes"] == CLASSES and meta["graph"] == "images_to_probs"
    (inp,) = sess.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(uint8)" and inp.shape[1:] == [3, 36, 36]
    assert isinstance(inp.shape[0], str)  # a dynamic batch axis
    batch = np.stack([pillow_input(p, meta["image_size"][0]) for p in images])
    (probs,) = sess.run(["probs"], {"images": batch})
    assert probs.shape == (3, 10)
    assert_same_top5(probs, expected)


def test_pt2_predicts_what_alexnet_predict_does(weights, images, tmp_path, capsys) -> None:
    expected = predicted(capsys, weights, images)
    out = tmp_path / "m.pt2"
    assert main(["export", str(weights), "--format", "pt2", "--out", str(out)]) == 0
    extra = {"alexnet.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    assert json.loads(extra["alexnet.json"])["class_names"][0] == "name c0"
    batch = torch.from_numpy(np.stack([pillow_input(p, 36) for p in images]))
    with torch.no_grad():
        probs = program.module()(batch)
    assert_same_top5(probs.numpy(), expected)


def test_network_only_exports_the_bare_network(weights, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "net.onnx"
    assert main(["export", str(weights), "--format", "onnx", "--network-only", "--out", str(out)]) == 0
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = load(weights).model(x)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"images": x.numpy()})
    np.testing.assert_allclose(logits, ref.numpy(), rtol=1e-4, atol=1e-5)


def test_the_paper_nets_exported_graph_matches_the_predict_path() -> None:
    """torch.export of the paper's network with its preprocessing: uint8 256×256 in, the 224 centre
    crop minus the mean image inside, the same probabilities as the predict path."""
    torch.manual_seed(0)
    net = models.create("alexnet", 1000).eval()
    aug = Augment.from_stats(random_stats(256), 224, input_norm="mean_image")
    module = ImageClassifier(net, aug).eval()
    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        program = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        got = program.module()(x[:1])
        ref = predict_probs(net, x[:1], aug, Precision(torch.device("cpu")), ten_crop=False)
    (placeholder,) = [n for n in program.graph.nodes if n.op == "placeholder" and n.name == "images"]
    assert placeholder.meta["val"].dtype == torch.uint8 and tuple(placeholder.meta["val"].shape[1:]) == (3, 256, 256)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_torchscript_is_refused_with_the_replacement(weights, tmp_path, capsys) -> None:
    assert main(["export", str(weights), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--format pt2" in err and "deprecated" in err
    assert not (tmp_path / "m.pt").exists()


def test_network_only_applies_to_graphs(weights, tmp_path, capsys) -> None:
    assert main(["export", str(weights), "--format", "safetensors", "--network-only", "--out", str(tmp_path / "w")]) == 2
    assert "--network-only applies to --format onnx and pt2" in capsys.readouterr().err


@pytest.mark.slow
def test_the_paper_nets_onnx_predicts_what_alexnet_predict_does(tmp_path, capsys) -> None:
    """The paper's network (256×256 stored, 224 crops, the mean image subtracted), exported to ONNX
    and run by onnxruntime on a photo-sized image (a 244 MB graph: about a minute on 2 cores)."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = models.create("alexnet", 1000)
    with torch.no_grad():  # separate the classes' scores well beyond float rounding, in a random order
        net.classifier[-1].bias.copy_(torch.randperm(1000, generator=torch.Generator().manual_seed(1)).float() / 100)
    classes = [f"n{i:08d}" for i in range(1000)]
    meta = {"model": "alexnet", "model_options": {}, "num_classes": 1000, "classes": classes, "class_names": classes,
            "input_size": 224, "input_norm": "mean_image", "data": None, "image_size": [256, 256]}
    weights = tmp_path / "paper.safetensors"
    save_weights(net, weights, meta, random_stats(256))
    img = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(img, quality=90)
    expected = predicted(capsys, weights, [img])
    out = tmp_path / "paper.onnx"
    assert main(["export", str(weights), "--format", "onnx", "--out", str(out)]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[1:] == [3, 256, 256]
    (probs,) = sess.run(["probs"], {"images": pillow_input(img, 256)[None]})
    assert_same_top5(probs, expected)
