"""The tools for looking inside a run: evaluate (JSON, ensembles, 10-crop, confusion matrix),
filters, report, neighbors and export, on a run trained for one epoch by the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet import models
from alexnet.cli import main
from alexnet.data.format import PreparedDataset
from alexnet.data.sources import synthetic
from alexnet.engine.checkpoint import read_weights, save_weights
from alexnet.engine.inference import augment_for, load

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny synthetic dataset; run A trained for one epoch by ``alexnet train``; run B the same
    model freshly initialised with another seed (an ensemble member that differs from A)."""
    root = tmp_path_factory.mktemp("tools")
    data = synthetic.build(root / "data", size=36, train_per_class=20, val_per_class=5)
    a = root / "run_a"
    r = subprocess.run([sys.executable, "-m", "alexnet", "train", "--data", str(data), "--model", "alexnet-cifar",
                        "--out", str(a), "--epochs", "1", "--batch-size", "16", "--workers", "0", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    sd, meta = read_weights(a / "model.safetensors")
    # The training set's mean image travels with the weights (predict/export need no dataset).
    from alexnet.data.format import PreparedDataset

    torch.testing.assert_close(sd["_data_stats.mean"], PreparedDataset(data, "train").stats()["mean"].float())
    torch.manual_seed(123)
    b = root / "run_b"
    b.mkdir()
    save_weights(models.create("alexnet-cifar", 10), b / "model.safetensors", meta)
    return {"root": root, "data": data, "a": a, "b": b}


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _val_probs(run: Path, data: Path, ten_crop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the whole val split, computed directly (the reference for evaluate)."""
    trained = load(run)
    ds = PreparedDataset(data, "val")
    aug = augment_for(trained, ds)
    x = ds.read_batch(range(len(ds)))
    with torch.no_grad():
        if ten_crop:
            views = aug.ten_crop(x)  # 10×N×3×S×S
            p = torch.stack([F.softmax(trained.model(v), 1) for v in views]).mean(0)
        else:
            p = F.softmax(trained.model(aug.center(x)), 1)
    return p, torch.from_numpy(ds.labels).long()


def _errors(p: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    top5 = p.topk(5, 1).indices
    return float((p.argmax(1) != y).float().mean()), float(1 - (top5 == y[:, None]).any(1).float().mean())


def test_evaluate_json(runs, capsys):
    out = _json(capsys, ["evaluate", str(runs["a"]), "--data", str(runs["data"]), "--json", "--device", "cpu",
                         "--workers", "0"])
    assert {"top1_err", "top5_err", "per_class", "n"} <= set(out)
    p, y = _val_probs(runs["a"], runs["data"])
    t1, t5 = _errors(p, y)
    assert out["n"] == 50 and out["top1_err"] == pytest.approx(t1) and out["top5_err"] == pytest.approx(t5)
    pc = out["per_class"]
    assert [c["class"] for c in pc] == synthetic.CLASS_DESCRIPTIONS and all(c["n"] == 5 for c in pc)
    pred = p.argmax(1)
    for c, row in enumerate(pc):
        assert row["top1_err"] == pytest.approx(float((pred[y == c] != c).float().mean()))
    assert json.loads((runs["a"] / "eval.json").read_text())["center"]["top1_err"] == pytest.approx(t1)


def test_evaluate_ensemble_of_two(runs, capsys):
    out = _json(capsys, ["evaluate", str(runs["a"]), str(runs["b"]), "--data", str(runs["data"]), "--json",
                         "--device", "cpu", "--workers", "0"])
    pa, y = _val_probs(runs["a"], runs["data"])
    pb, _ = _val_probs(runs["b"], runs["data"])
    t1, t5 = _errors((pa + pb) / 2, y)  # the paper's ensembles average the softmax outputs
    assert out["top1_err"] == pytest.approx(t1) and out["top5_err"] == pytest.approx(t5)
    members = out["members"]
    assert [m["run"] for m in members] == [str(runs["a"]), str(runs["b"])]
    assert members[1]["top1_err"] == pytest.approx(_errors(pb, y)[0])


def test_evaluate_ten_crop_and_confusion(runs, capsys, tmp_path):
    png = tmp_path / "conf" / "confusion.png"
    out = _json(capsys, ["evaluate", str(runs["a"]), "--data", str(runs["data"]), "--ten-crop", "--json",
                         "--confusion", str(png), "--device", "cpu", "--workers", "0"])
    p, y = _val_probs(runs["a"], runs["data"], ten_crop=True)
    assert out["ten_crop"] is True and out["top1_err"] == pytest.approx(_errors(p, y)[0])
    assert png.read_bytes()[:8] == PNG
    assert "ten_crop" in json.loads((runs["a"] / "eval.json").read_text())


def test_evaluate_bad_inputs(runs, capsys, tmp_path):
    cases = [
        (["evaluate", str(tmp_path / "nope"), "--data", str(runs["data"])], "nope"),
        (["evaluate", str(runs["a"]), "--data", str(tmp_path / "nodata")], "nodata"),
    ]
    for argv, word in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0] and "Traceback" not in err[0]


def test_filters_png(runs, capsys, tmp_path):
    out = tmp_path / "filters.png"
    assert main(["filters", str(runs["a"]), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG


def test_report_writes_markdown(runs, capsys):
    assert main(["report", str(runs["a"])]) == 0
    report = runs["a"] / "report.md"
    assert report.is_file() and report.stat().st_size > 0
    for fig in ("curves.png", "filters.png", "confusion.png", "predictions.png"):
        assert (runs["a"] / fig).read_bytes()[:8] == PNG, fig
    assert main(["report", str(runs["root"] / "no-run")]) == 2


def test_neighbors(runs, capsys, tmp_path):
    from alexnet.engine.neighbors import hidden_features

    png = tmp_path / "nb.png"
    assert main(["neighbors", str(runs["a"]), "--data", str(runs["data"]), "--query", "3", "--query", "17",
                 "--out", str(png), "--k", "4", "--device", "cpu", "--batch-size", "64"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert png.read_bytes()[:8] == PNG and len(lines) == 3
    # Reference: brute-force distances between fc-input features (Figure 4 right) of all images.
    trained = load(runs["a"])
    train, val = PreparedDataset(runs["data"], "train"), PreparedDataset(runs["data"], "val")
    aug = augment_for(trained, train)
    ft = hidden_features(trained.model, aug.center(train.read_batch(range(len(train)))))
    assert ft.shape == (200, 1024)  # alexnet-cifar: the input of its only Linear, 64·4·4
    for line, q in zip(lines, (3, 17)):
        fq = hidden_features(trained.model, aug.center(val.read_batch([q])))
        want = torch.cdist(fq, ft, compute_mode="donot_use_mm_for_euclid_dist")[0].argsort()[:4].tolist()
        got = [int(tok[1:]) for tok in line.split() if tok.startswith("#")]
        assert got == want, line
    # A training image finds itself first, at distance 0.
    assert main(["neighbors", str(runs["a"]), "--data", str(runs["data"]), "--split", "train", "--query", "5",
                 "--out", str(png), "--k", "2", "--device", "cpu"]) == 0
    first = capsys.readouterr().out.splitlines()[0].split(",")[0]  # "query 5 (...): #5 filled circle d=0"
    assert "#5 " in first and float(first.rsplit("d=", 1)[1]) < 1e-4
    assert main(["neighbors", str(runs["a"]), "--data", str(runs["data"]), "--query", "50", "--out", str(png)]) == 2
    assert "50" in capsys.readouterr().err


def test_neighbors_hook_is_fc7_for_alexnet():
    from alexnet.engine.neighbors import hidden_features, last_linear

    torch.manual_seed(0)
    m = models.create("alexnet", 10, towers=1, widths=(8, 8, 8, 8, 8), hidden=32).eval()
    x = torch.randn(2, 3, 224, 224)
    f = hidden_features(m, x)
    fc7 = m.classifier[3]  # Linear(32, 32) of fc → ReLU → dropout, fc → ReLU → dropout, fc
    with torch.no_grad():
        h = torch.flatten(m.features(x), 1)
        ref = torch.relu(fc7(torch.relu(m.classifier[0](h))))
    assert last_linear(m) is m.classifier[-1] and f.shape == (2, 32)
    torch.testing.assert_close(f, ref)


def test_export_formats(runs, capsys, tmp_path):
    import onnx
    from onnx.reference import ReferenceEvaluator

    trained = load(runs["a"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # batch 3: not the traced batch
    with torch.no_grad():
        ref = trained.model(x)

    st = tmp_path / "m.safetensors"
    assert main(["export", str(runs["a"]), "--format", "safetensors", "--out", str(st)]) == 0
    sd, meta = read_weights(st)
    assert meta == read_weights(runs["a"] / "model.safetensors")[1]
    with torch.no_grad():
        torch.testing.assert_close(load(st).model(x), ref)

    pt2 = tmp_path / "m.pt2"
    assert main(["export", str(runs["a"]), "--format", "pt2", "--network-only", "--out", str(pt2)]) == 0
    extra = {"alexnet.json": ""}
    program = torch.export.load(str(pt2), extra_files=extra)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), ref)
    assert json.loads(extra["alexnet.json"])["classes"] == synthetic.CLASS_NAMES

    ox = tmp_path / "m.onnx"
    assert main(["export", str(runs["a"]), "--format", "onnx", "--network-only", "--out", str(ox)]) == 0
    m = onnx.load(str(ox))
    onnx.checker.check_model(m)
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # a dynamic batch axis
    # onnx's own reference evaluator runs the graph (tests/test_export.py runs onnxruntime).
    got = ReferenceEvaluator(m).run(None, {m.graph.input[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)
    assert json.loads({p.key: p.value for p in m.metadata_props}["alexnet"])["num_classes"] == 10

    assert main(["export", str(runs["a"]), "--format", "onnx", "--out", str(tmp_path)]) == 2
