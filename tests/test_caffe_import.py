"""``alexnet import caffe``: Caffe's AlexNet weights, tested without the real file.

Each test builds a small AlexNet-shaped caffemodel (random blobs, narrow layers, the real 227×227
geometry) with the same protobuf messages the importer reads, in both of Caffe's layouts (the
legacy ``layers`` / V1 the BVLC files use, and the current ``layer``), imports it, and compares
the network's outputs with a forward pass of Caffe's layer definitions written here in NumPy:
grouped convolution, LRN across channels in Caffe's convention (alpha / n, k = 1), max-pooling
with Caffe's rounding up of the output size, inner products on C×H×W-flattened maps; the input
is the image's BGR crop minus Caffe's BGR mean, computed here from the files the test wrote.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("google.protobuf")

from alexnet.cli import main  # noqa: E402
from alexnet.errors import UserError  # noqa: E402
from alexnet.engine import caffe_weights as cw  # noqa: E402
from alexnet.engine.inference import file_augment, image_classifier, load, read_image  # noqa: E402

WIDTHS, HIDDEN, CLASSES, SIZE = (8, 16, 12, 12, 8), 32, 10, 227


# -- Caffe's layers in NumPy (float64) --------------------------------------------------------------


def np_conv(x, w, b, stride, pad, group):
    """Caffe's convolution: output size rounded down; group g reads input channels and writes
    output channels of slice g."""
    from numpy.lib.stride_tricks import sliding_window_view

    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # N×C×OH×OW×k×k
    cg, og = x.shape[1] // group, w.shape[0] // group
    outs = [np.einsum("nchwij,ocij->nohw", win[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], optimize=True)
            for g in range(group)]
    return np.concatenate(outs, axis=1) + b[None, :, None, None]


def np_lrn(x, size, alpha, beta, k):
    """Caffe's ACROSS_CHANNELS LRN: b = a / (k + alpha / n * sum of a^2 over n channels around)^beta."""
    half = (size - 1) // 2
    sq = np.pad(x * x, ((0, 0), (half, half), (0, 0), (0, 0)))
    s = sum(sq[:, i:i + x.shape[1]] for i in range(size))
    return x / (k + alpha / size * s) ** beta


def np_maxpool(x, kernel, stride):
    """Caffe's max-pooling (pad 0): ceil((H - k) / s) + 1 outputs, the last window clipped."""
    h, w = x.shape[2:]
    oh, ow = (int(math.ceil((d - kernel) / stride)) + 1 for d in (h, w))
    out = np.empty((*x.shape[:2], oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * stride:min(i * stride + kernel, h), j * stride:min(j * stride + kernel, w)].max((2, 3))
    return out


def np_forward(spec, x):
    """Caffe's forward pass of the layers in ``spec`` (dicts, as :func:`spec_of` writes them)."""
    for layer in spec:
        t = layer["type"]
        if t == "Convolution":
            x = np_conv(x, layer["w"], layer["b"], layer["stride"], layer["pad"], layer["group"])
        elif t == "ReLU":
            x = np.maximum(x, 0)
        elif t == "LRN":
            x = np_lrn(x, 5, 1e-4, 0.75, layer["k"])
        elif t == "Pooling":
            x = np_maxpool(x, 3, 2)
        elif t == "InnerProduct":
            x = x.reshape(len(x), -1) @ layer["w"].T + layer["b"]  # C×H×W flattening
    return x


# -- a small AlexNet-shaped caffemodel ---------------------------------------------------------------


def spec_of(seed: int, caffenet: bool, lrn_k: float = 1.0) -> list[dict]:
    g = np.random.default_rng(seed)
    spec: list[dict] = []

    def conv(name, cin, cout, k, stride, pad, group):
        fan = cin // group * k * k
        spec.append(dict(type="Convolution", name=name, out=cout, kernel=k, stride=stride, pad=pad, group=group,
                         w=g.normal(0, 1.5 / math.sqrt(fan), (cout, cin // group, k, k)), b=g.normal(0, 0.5, cout)))
        spec.append(dict(type="ReLU", name=f"relu{name[-1]}"))

    def norm_pool(i):
        n, p = dict(type="LRN", name=f"norm{i}", k=lrn_k), dict(type="Pooling", name=f"pool{i}")
        spec.extend([p, n] if caffenet else [n, p])

    def fc(name, cin, cout, relu):
        spec.append(dict(type="InnerProduct", name=name, out=cout, w=g.normal(0, 1.5 / math.sqrt(cin), (cout, cin)),
                         b=g.normal(0, 0.5, cout)))
        if relu:
            spec.extend([dict(type="ReLU", name=f"relu{name[-1]}"), dict(type="Dropout", name=f"drop{name[-1]}")])

    w1, w2, w3, w4, w5 = WIDTHS
    conv("conv1", 3, w1, 11, 4, 0, 1)
    norm_pool(1)
    conv("conv2", w1, w2, 5, 1, 2, 2)
    norm_pool(2)
    conv("conv3", w2, w3, 3, 1, 1, 1)
    conv("conv4", w3, w4, 3, 1, 1, 2)
    conv("conv5", w4, w5, 3, 1, 1, 2)
    spec.append(dict(type="Pooling", name="pool5"))
    fc("fc6", w5 * 6 * 6, HIDDEN, True)
    fc("fc7", HIDDEN, HIDDEN, True)
    fc("fc8", HIDDEN, CLASSES, False)
    return spec


def _blob(layer_msg, values: np.ndarray, legacy: bool) -> None:
    blob = layer_msg.blobs.add()
    if legacy:  # V1: num × channels × height × width, leading ones for fewer axes
        dims = [1] * (4 - values.ndim) + list(values.shape)
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(values.shape)
    blob.data.extend(values.astype(np.float32).ravel().tolist())


def _params(msg, layer: dict) -> None:
    t = layer["type"]
    if t == "Convolution":
        p = msg.convolution_param
        p.num_output, p.group = layer["out"], layer["group"]
        p.kernel_size.append(layer["kernel"])
        p.stride.append(layer["stride"])
        if layer["pad"]:
            p.pad.append(layer["pad"])
    elif t == "LRN":
        msg.lrn_param.local_size, msg.lrn_param.alpha, msg.lrn_param.beta, msg.lrn_param.k = 5, 1e-4, 0.75, layer["k"]
    elif t == "Pooling":
        msg.pooling_param.pool, msg.pooling_param.kernel_size, msg.pooling_param.stride = 0, 3, 2
    elif t == "InnerProduct":
        msg.inner_product_param.num_output = layer["out"]
    elif t == "Dropout":
        msg.dropout_param.dropout_ratio = 0.5


V1_OF = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "LRN": "LRN", "Pooling": "POOLING", "InnerProduct": "INNER_PRODUCT",
         "Dropout": "DROPOUT"}


def net_of(spec: list[dict], fmt: str, blobs: bool = True):
    """A NetParameter: ``fmt`` "v1" (``layers``, enum types, legacy blobs, data and loss layers
    as in a train_val net) or "layer" (an Input layer, as in a deploy net)."""
    net = cw.message("NetParameter")(name="AlexNet")
    if fmt == "v1":
        net.layers.add(name="data", type=cw.V1_TYPES["DATA"], top=["data", "label"])
        for layer in spec:
            m = net.layers.add(name=layer["name"], type=cw.V1_TYPES[V1_OF[layer["type"]]])
            _params(m, layer)
            if blobs and "w" in layer:
                _blob(m, layer["w"], True)
                _blob(m, layer["b"], True)
        net.layers.add(name="loss", type=cw.V1_TYPES["SOFTMAX_LOSS"])
    else:
        net.layer.add(name="data", type="Input").input_param.shape.add().dim.extend([10, 3, SIZE, SIZE])
        for layer in spec:
            m = net.layer.add(name=layer["name"], type=layer["type"])
            _params(m, layer)
            if blobs and "w" in layer:
                _blob(m, layer["w"], False)
                _blob(m, layer["b"], False)
        net.layer.add(name="prob", type="Softmax")
    return net


def mean_bgr(seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    base = np.array([104.0, 117.0, 123.0])[:, None, None]
    return (base + g.uniform(-30, 30, (3, 256, 256))).astype(np.float32)


def smooth_image(seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((256, 256), Image.BICUBIC))


def reference_probs(spec, images_rgb: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Caffe's classification of uint8 RGB N×256×256×3 images: the central 227 crop of the BGR
    image minus the BGR mean, forward, softmax."""
    o = (256 - SIZE) // 2
    bgr = images_rgb[..., ::-1].transpose(0, 3, 1, 2).astype(np.float64)
    x = (bgr - mean[None].astype(np.float64))[:, :, o:o + SIZE, o:o + SIZE]
    z = np_forward(spec, x)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module", params=[("v1", False, "npy"), ("layer", True, "binaryproto")],
                ids=["bvlc_alexnet-v1-layers", "caffenet-layer-deploy"])
def imported(request, tmp_path_factory):
    fmt, caffenet, mean_kind = request.param
    root = tmp_path_factory.mktemp(f"caffe-{fmt}")
    spec = spec_of(1, caffenet)
    (root / "net.caffemodel").write_bytes(net_of(spec, fmt).SerializeToString())
    mean = mean_bgr(2)
    if mean_kind == "npy":
        np.save(root / "mean.npy", mean)
        mean_path = root / "mean.npy"
    else:
        blob = cw.message("BlobProto")(num=1, channels=3, height=256, width=256)
        blob.data.extend(mean.ravel().tolist())
        mean_path = root / "mean.binaryproto"
        mean_path.write_bytes(blob.SerializeToString())
    argv = ["import", "caffe", str(root / "net.caffemodel"), "--mean", str(mean_path), "--out", str(root / "run")]
    if fmt == "layer":  # the definition from a text deploy.prototxt, with fields the subset does not hold
        from google.protobuf import text_format

        text = text_format.MessageToString(net_of(spec, fmt, blobs=False))
        text = text.replace('type: "Convolution"\n', 'type: "Convolution"\n  param { lr_mult: 1 decay_mult: 1 }\n')
        (root / "deploy.prototxt").write_text(text)
        argv += ["--deploy", str(root / "deploy.prototxt")]
    images = np.stack([smooth_image(s) for s in range(4)])
    paths = []
    for i, im in enumerate(images):
        paths.append(root / f"im{i}.png")
        Image.fromarray(im).save(paths[-1])
    assert main(argv) == 0
    return dict(root=root, run=root / "run", spec=spec, mean=mean, images=images, paths=paths, fmt=fmt, caffenet=caffenet)


def test_import_writes_a_run_with_caffes_options_and_input(imported):
    t = load(imported["run"])
    opts = t.meta["model_options"]
    assert opts["conv1_padding"] == 0 and opts["input_size"] == SIZE and opts["lrn"] == "released" and opts["lrn_k"] == 1.0
    assert opts.get("lrn_after_pool", False) is imported["caffenet"]
    assert t.meta["channel_order"] == "bgr" and t.meta["input_mean"] == "weights" and t.meta["source"] == "caffe"
    assert t.meta["input_size"] == SIZE and t.meta["image_size"] == [256, 256]
    # The mean is stored as RGB, as every mean image of this project.
    np.testing.assert_array_equal(t.stats["mean"].numpy(), imported["mean"][::-1])
    convs = [m for m in t.model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]  # grouped convolutions stay grouped
    summary = json.loads((imported["run"] / "import.json").read_text())
    assert summary["format"] == ("layers (V1)" if imported["fmt"] == "v1" else "layer")
    assert summary["layers"] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]


def test_network_matches_caffes_layers_in_numpy(imported):
    """The bare network on a BGR-minus-mean crop equals Caffe's forward pass."""
    t = load(imported["run"])
    g = np.random.default_rng(5)
    x = g.uniform(-120, 120, (2, 3, SIZE, SIZE))
    want = np_forward(imported["spec"], x)
    with torch.no_grad():
        got = t.model(torch.from_numpy(x).float()).double().numpy()
    scale = np.abs(want).max()
    assert scale > 1  # the outputs are not vanishing: the comparison means something
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * scale)


def test_lrn_and_pooling_order_matter(imported):
    """The reference is sensitive to what the options express: with the paper's k = 2, or the
    other order of LRN and pooling, Caffe's outputs are not reproduced."""
    x = np.random.default_rng(6).uniform(-120, 120, (1, 3, SIZE, SIZE))
    want = np_forward(imported["spec"], x)
    for other in (spec_of(1, imported["caffenet"], lrn_k=2.0), spec_of(1, not imported["caffenet"])):
        assert np.abs(np_forward(other, x) - want).max() > 1e-2 * np.abs(want).max()


def test_predict_and_export_apply_bgr_and_the_mean(imported, capsys):
    t = load(imported["run"])
    want = reference_probs(imported["spec"], imported["images"], imported["mean"])
    x = torch.stack([read_image(p, (256, 256)) for p in imported["paths"]])
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), imported["images"])  # the files read back unchanged
    with torch.no_grad():
        via_augment = F.softmax(t.model(file_augment(t).center(x)), 1).double().numpy()
        via_export = image_classifier(t)(x).double().numpy()  # what the ONNX / pt2 graphs hold
    np.testing.assert_allclose(via_augment, want, atol=1e-4)
    np.testing.assert_allclose(via_export, want, atol=1e-4)
    assert main(["predict", str(imported["run"]), *map(str, imported["paths"]), "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["top5"][0]["index"] for o in out] == want.argmax(1).tolist()


def test_exported_graph_reorders_the_channels_inside(imported):
    """``export --format pt2``: uint8 RGB images in, Caffe's probabilities out, run by torch.export
    alone (the ONNX graph is built from the same module, see test_export.py)."""
    out = imported["root"] / f"net-{imported['fmt']}.pt2"
    assert main(["export", str(imported["run"]), "--format", "pt2", "--out", str(out)]) == 0
    program = torch.export.load(str(out)).module()
    x = torch.from_numpy(imported["images"]).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        got = program(x).double().numpy()
    np.testing.assert_allclose(got, reference_probs(imported["spec"], imported["images"], imported["mean"]), atol=1e-4)


def test_hubs_carry_channel_order_and_mean(imported):
    from alexnet.engine.torch_hub import build

    m = build("alexnet", weights=imported["run"] / "model.safetensors")
    assert m.meta["channel_order"] == "bgr" and m.meta["model_options"]["conv1_padding"] == 0
    np.testing.assert_array_equal(m.data_stats["mean"].numpy(), imported["mean"][::-1])
    hf = pytest.importorskip("alexnet.engine.hf_hub")
    p = hf.Pretrained.from_trained(load(imported["run"]))
    assert "BGR" in hf.card_fields(p)["input"]


def test_rerun_replaces_its_own_run_and_nothing_else(imported, capsys):
    root = imported["root"]
    argv = ["import", "caffe", str(root / "net.caffemodel"), "--out"]
    assert main([*argv, str(imported["run"])]) == 0  # its own earlier output
    capsys.readouterr()
    other = root / "someone-elses"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main([*argv, str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not write" in err[0]
    assert (other / "notes.txt").read_text() == "keep me" and not (other / "model.safetensors").exists()


def test_evaluate_uses_the_stored_mean_and_bgr(tmp_path, capsys):
    """A dataset whose labels are the reference's predictions for half the images: top-1 error
    0.5 exactly, with the default per-channel mean and classes from a synset file."""
    from alexnet.data.writer import write_arrays

    spec = spec_of(3, False)
    (tmp_path / "m.caffemodel").write_bytes(net_of(spec, "v1").SerializeToString())
    wnids = [f"n{i:08d}" for i in range(1, CLASSES + 1)]
    (tmp_path / "synset_words.txt").write_text("".join(f"{w} class {i}, other name\n" for i, w in enumerate(wnids)))
    assert main(["import", "caffe", str(tmp_path / "m.caffemodel"), "--synsets", str(tmp_path / "synset_words.txt"),
                 "--out", str(tmp_path / "run")]) == 0
    images = np.stack([smooth_image(10 + s) for s in range(6)])
    mean = np.broadcast_to(np.array([104.0, 117.0, 123.0])[:, None, None], (3, 256, 256))
    pred = reference_probs(spec, images, mean).argmax(1)
    labels = np.where(np.arange(6) % 2 == 0, pred, (pred + 1) % CLASSES)
    ds = write_arrays(tmp_path / "data", {"train": (images, labels), "val": (images, labels)}, classes=wnids)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(ds), "--json", "--device", "cpu", "--workers", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 6 and out["top1_err"] == pytest.approx(0.5)
    t = load(tmp_path / "run")
    assert t.meta["classes"] == wnids and t.meta["class_names"][0] == "class 0"


# -- refusals, one line each -------------------------------------------------------------------------


def _refused(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_refuses_a_file_that_is_not_a_caffemodel(tmp_path, capsys):
    (tmp_path / "x.caffemodel").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    for name in ("x.caffemodel", "empty.caffemodel"):
        err = _refused(capsys, ["import", "caffe", str(tmp_path / name), "--out", str(tmp_path / "run")])
        assert "not a caffemodel" in err and name in err
    assert not (tmp_path / "run").exists()


def test_refuses_a_net_that_is_not_alexnet(tmp_path, capsys):
    spec = [lay for lay in spec_of(1, False) if lay["name"] not in ("conv4", "relu4")]
    (tmp_path / "n.caffemodel").write_bytes(net_of(spec, "layer").SerializeToString())
    err = _refused(capsys, ["import", "caffe", str(tmp_path / "n.caffemodel"), "--out", str(tmp_path / "run")])
    assert "not an AlexNet" in err
    spec = spec_of(1, False)
    spec[0]["kernel"] = 7
    (tmp_path / "k.caffemodel").write_bytes(net_of(spec, "layer").SerializeToString())
    assert "conv1" in _refused(capsys, ["import", "caffe", str(tmp_path / "k.caffemodel"), "--out", str(tmp_path / "r")])


def test_refuses_blobs_whose_shapes_do_not_match(tmp_path, capsys):
    spec = spec_of(1, False)
    fc6 = next(lay for lay in spec if lay["name"] == "fc6")
    fc6["w"] = fc6["w"][:, :-8]  # fc6 reading fewer inputs than 8×6×6
    (tmp_path / "s.caffemodel").write_bytes(net_of(spec, "v1").SerializeToString())
    err = _refused(capsys, ["import", "caffe", str(tmp_path / "s.caffemodel"), "--out", str(tmp_path / "run")])
    assert "'fc6' weights are 32×280" in err and "32×288" in err


def test_refuses_without_protobuf(tmp_path, capsys, monkeypatch):
    import sys

    import alexnet.engine

    monkeypatch.delitem(sys.modules, "alexnet.engine.caffe_weights")
    monkeypatch.delattr(alexnet.engine, "caffe_weights")
    monkeypatch.setitem(sys.modules, "google.protobuf", None)  # import google.protobuf raises ImportError
    (tmp_path / "m.caffemodel").write_bytes(b"")
    err = _refused(capsys, ["import", "caffe", str(tmp_path / "m.caffemodel"), "--out", str(tmp_path / "run")])
    assert "pip install 'alexnet[caffe]'" in err


def test_training_refuses_caffes_input_size():
    """The training loop crops the registry's 224: a 227 network is refused before any work."""
    from alexnet.config import TrainConfig
    from alexnet.engine.checks import check_against_data

    cfg = TrainConfig(model="alexnet", model_options={"input_size": 227, "conv1_padding": 0})
    with pytest.raises(UserError, match="input_size=227: training crops are 224×224"):
        check_against_data(cfg, image_size=(256, 256), input_size=224)


def test_filters_are_shown_in_rgb(imported, monkeypatch, tmp_path):
    """Figure 3 of Caffe's weights: conv1's kernels read B, G, R; the figure shows them as RGB."""
    import alexnet.report.run as run_figures

    seen = {}
    monkeypatch.setattr(run_figures, "plot_filters", lambda w, path, **kw: seen.setdefault("w", w) is None or path)
    assert main(["filters", str(imported["run"]), "--out", str(tmp_path / "f.png")]) == 0
    conv1 = next(lay for lay in imported["spec"] if lay["name"] == "conv1")["w"]
    np.testing.assert_allclose(seen["w"].numpy(), conv1[:, ::-1], rtol=1e-6)
