"""Figures and markdown reports (alexnet.report): every plot writes a real PNG, Figure 3's layout and
per-kernel normalisation, markdown tables, and a run's report.md with and without eval.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from alexnet.engine.metrics import read_metrics
from alexnet.environment import environment
from alexnet.errors import UserError
from alexnet.report import (
    filter_grid,
    markdown_table,
    plot_bars,
    plot_confusion,
    plot_curves,
    plot_filters,
    plot_neighbors,
    plot_predictions,
    plot_series,
    write_run_report,
)


def _png(path: Path, min_side: int = 100) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # decodes the whole file: a truncated PNG fails here
        w, h = im.size
    assert w >= min_side and h >= min_side
    return w, h


def _metrics(n: int) -> list[dict]:
    rows = []
    for e in range(1, n + 1):
        lr = 0.01 if e <= n // 2 else 0.001  # one drop, as in §5
        rows.append({"epoch": e, "lr": lr, "train_loss": 2.3 / e, "train_top1_err": 0.9 / e,
                     "val_top1_err": 0.95 / e + 0.05, "val_top5_err": 0.5 / e})
    return rows


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --------------------------------------------------------------------------- figures
@pytest.mark.parametrize("epochs", [1, 4])
def test_plot_curves(tmp_path: Path, epochs: int) -> None:
    out = plot_curves(_metrics(epochs), tmp_path / "sub" / "curves.png")
    assert out == tmp_path / "sub" / "curves.png"
    _png(out)


def test_plot_curves_skips_missing_values(tmp_path: Path) -> None:
    rows = _metrics(3)
    rows[1]["val_top1_err"] = None  # an epoch without validation
    del rows[2]["val_top5_err"]
    _png(plot_curves(rows, tmp_path / "c.png"))
    with pytest.raises(UserError):
        plot_curves([], tmp_path / "none.png")


def test_plot_curves_is_deterministic(tmp_path: Path) -> None:
    a = plot_curves(_metrics(3), tmp_path / "a.png").read_bytes()
    b = plot_curves(_metrics(3), tmp_path / "b.png").read_bytes()
    assert a == b


def test_plot_filters_layout_depends_on_towers(tmp_path: Path) -> None:
    w = torch.randn(8, 3, 5, 5, generator=_gen())
    one = _png(plot_filters(w, tmp_path / "one.png", towers=1), min_side=20)
    two = _png(plot_filters(w, tmp_path / "two.png", towers=2, title="conv1"), min_side=20)
    assert one != two
    assert two[1] > one[1]  # two labelled blocks, one above the other, make a taller image

    b1 = filter_grid(w, towers=1)
    b2 = filter_grid(w, towers=2)
    assert len(b1) == 1 and len(b2) == 2
    # 8 kernels of 5×5 in one row with 1-pixel gaps; the two towers hold 4 each.
    assert b1[0].shape == (5, 8 * 5 + 7, 3)
    assert b2[0].shape == b2[1].shape == (5, 4 * 5 + 3, 3)
    # Tower 2 is kernels 4..7: its first tile is kernel 4, the fifth tile of the single block.
    assert np.allclose(b2[1][:, :5], b1[0][:, 4 * 6 : 4 * 6 + 5])
    assert np.allclose(b2[0][:, :5], b1[0][:, :5])


def test_filters_normalised_per_kernel(tmp_path: Path) -> None:
    w = torch.randn(4, 3, 3, 3, generator=_gen())
    w[1] = 7.0  # constant kernel: max = min
    w[2] *= 1000.0  # a kernel at another scale still spans [0, 1] on its own
    w[3, 0, 0, 0] = float("nan")
    (grid,) = filter_grid(w, columns=4)
    assert np.isfinite(grid).all()
    tiles = [grid[:, c * 4 : c * 4 + 3] for c in range(4)]
    for i in (0, 2, 3):
        assert tiles[i].min() == pytest.approx(0.0) and tiles[i].max() == pytest.approx(1.0)
    assert np.allclose(tiles[1], 0.5)
    assert np.allclose(grid[:, 3], 1.0)  # the gap between kernels is white
    _png(plot_filters(w.to(torch.bfloat16), tmp_path / "f.png"), min_side=20)


def test_filters_grayscale_and_bad_shapes(tmp_path: Path) -> None:
    w = torch.randn(6, 1, 5, 5, generator=_gen())
    (grid,) = filter_grid(w)
    assert np.allclose(grid[..., 0], grid[..., 1]) and np.allclose(grid[..., 1], grid[..., 2])
    _png(plot_filters(w, tmp_path / "g.png"), min_side=20)
    with pytest.raises(UserError):
        plot_filters(torch.randn(6, 3, 5, 5), tmp_path / "x.png", towers=4)
    with pytest.raises(UserError):
        plot_filters(torch.randn(6, 2, 5, 5), tmp_path / "x.png")


def test_plot_predictions(tmp_path: Path) -> None:
    g = _gen()
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=g)
    probs = torch.softmax(torch.randn(3, 7, generator=g), dim=1)
    names = [f"class {i}, synonym" for i in range(7)]
    _png(plot_predictions(images, probs, [0, 3, 6], names, tmp_path / "p.png"))
    _png(plot_predictions(images[:1], probs[:1], torch.tensor([2]), names, tmp_path / "p1.png", k=3))
    with pytest.raises(UserError):
        plot_predictions(images, probs[:2], [0, 1, 2], names, tmp_path / "bad.png")


def test_plot_predictions_marks_correct_class_red(tmp_path: Path) -> None:
    # Two images whose probabilities are identical; only the true label differs. The one whose
    # label is among the top-5 must show a red bar, the other none.
    images = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)
    probs = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0.0]] * 2)
    names = [str(i) for i in range(7)]

    def red_pixels(label: int) -> int:
        path = plot_predictions(images[:1], probs[:1], [label], names, tmp_path / f"r{label}.png")
        a = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int(((a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] < 80)).sum())

    assert red_pixels(0) > 50
    assert red_pixels(6) == 0


def test_plot_neighbors(tmp_path: Path) -> None:
    g = _gen()
    q = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8, generator=g)
    nb = torch.randint(0, 256, (2, 4, 3, 12, 12), dtype=torch.uint8, generator=g)
    plain = _png(plot_neighbors(q, nb, tmp_path / "n.png"))
    labelled = _png(plot_neighbors(q, nb, tmp_path / "nl.png", query_labels=[0, 1],
                                   neighbor_labels=[[0, 1, 0, 0], [1, 1, 0, 1]], class_names=["cat", "dog"]))
    assert plain[0] > plain[1]  # one query and four neighbours per row: wider than tall
    assert labelled[1] > plain[1]  # captions take room
    with pytest.raises(UserError):
        plot_neighbors(q, nb[:1], tmp_path / "bad.png")


@pytest.mark.parametrize("n", [3, 40])
def test_plot_confusion(tmp_path: Path, n: int) -> None:
    m = np.eye(n, dtype=np.int64) * 5 + 1
    m[0] = 0  # a class without images: its row stays 0 instead of 0/0
    _png(plot_confusion(torch.from_numpy(m), [f"c{i}" for i in range(n)], tmp_path / "c.png"))
    with pytest.raises(UserError):
        plot_confusion(np.ones((2, 3)), ["a", "b"], tmp_path / "bad.png")
    with pytest.raises(UserError):
        plot_confusion(np.ones((3, 3)), ["a", "b"], tmp_path / "bad.png")


def test_plot_bars_and_series(tmp_path: Path) -> None:
    rows = [{"variant": "paper", "top1_err": 0.3, "std": 0.01}, {"variant": "no LRN", "top1_err": 0.32, "std": 0.02},
            {"variant": "failed", "top1_err": None}]
    _png(plot_bars(rows, "variant", "top1_err", tmp_path / "b.png", yerr="std", title="ablation",
                   reference={"paper": 0.407}))
    _png(plot_bars([{"name": "a", "img_per_s": 100.0}], "name", "img_per_s", tmp_path / "b1.png", ylabel="img/s"))
    with pytest.raises(UserError):
        plot_bars([{"variant": "a"}], "name", "top1_err", tmp_path / "bad.png")
    series = {"ReLU": [(1, 0.6), (2, 0.3), (3, 0.2)], "tanh": [(1, 0.7), (2, 0.6), (3, 0.5)]}
    _png(plot_series(series, tmp_path / "s.png", "epochs", "training error rate", title="Figure 1", hline=0.25))


# --------------------------------------------------------------------------- markdown
def test_markdown_table_format() -> None:
    rows = [{"variant": "paper", "top1_err": 0.40712, "n": 3}, {"variant": "a|b", "top1_err": 0.5, "extra": 1.23456}]
    text = markdown_table(rows, formats={"*_err": "pct"})
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "| variant | top1_err | n | extra |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| paper | 40.71% | 3 | — |"
    assert lines[3] == "| a\\|b | 50.00% | — | 1.235 |"
    assert len(lines) == 4
    # Exact names win over patterns; columns select and order; headers rename.
    text = markdown_table(rows, ["top1_err", "variant"], {"top1_err": ".3f", "*_err": "pct"}, {"top1_err": "top-1"})
    assert text.splitlines()[0] == "| top-1 | variant |"
    assert text.splitlines()[2] == "| 0.407 | paper |"
    assert markdown_table([]) == ""


def test_environment() -> None:
    env = environment()
    for key in ("platform", "processor", "cpu_count", "python", "torch", "torchvision", "numpy", "cuda_device", "git_sha", "date_utc"):
        assert key in env
    assert env["torch"] == torch.__version__
    assert env["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40}", env["git_sha"])
    assert env["date_utc"].endswith("UTC")


def _fake_run(run: Path, with_eval: bool = True) -> None:
    run.mkdir()
    config = {"model": "alexnet-cifar", "data": {"name": "cifar10"}, "epochs": 4, "batch_size": 128,
              "lr": 0.01, "seed": 0, "command": "alexnet train --model alexnet-cifar --epochs 4"}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rows = _metrics(4)
    for r in rows:  # the fields engine/train.py writes: time_s is cumulative training time
        r["img_per_s"] = 1234.5
        r["epoch_time_s"] = 30.0
        r["time_s"] = 30.0 * r["epoch"]
    # The last line is torn, as when training is killed while writing: it must be ignored.
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 5, "lr"')
    if with_eval:
        (run / "eval.json").write_text(json.dumps({"center": {"top1_err": 0.2468, "top5_err": 0.0512},
                                                   "ten_crop": {"top1_err": 0.2345, "top5_err": 0.0432}}))
    Image.new("RGB", (8, 8), (255, 0, 0)).save(run / "curves.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(run / "extra_plot.png")


def test_write_run_report(tmp_path: Path) -> None:
    run = tmp_path / "run1"
    _fake_run(run)
    path = write_run_report(run)
    assert path == run / "report.md"
    text = path.read_text()
    assert text.startswith("# Run report: run1")
    assert "alexnet train --model alexnet-cifar --epochs 4" in text
    final = _metrics(4)[-1]
    assert f"{100 * final['train_top1_err']:.2f}%" in text  # 22.50%
    assert f"{100 * final['val_top1_err']:.2f}%" in text
    assert "24.68%" in text and "5.12%" in text  # centre crop
    assert "23.45%" in text and "4.32%" in text  # 10-crop
    assert "1,234" in text or "1,235" in text  # img/s
    assert "0:02:00" in text  # 4 epochs × 30 s
    assert "40.70%" in text and "18.20%" in text and "not comparable" in text  # the paper, for context
    assert "](curves.png)" in text and "](extra_plot.png)" in text
    assert "filters.png" not in text  # not in the folder, so not linked
    assert "batch_size: 128" in text
    assert torch.__version__ in text


def test_write_run_report_without_eval_or_config(tmp_path: Path) -> None:
    run = tmp_path / "run2"
    _fake_run(run, with_eval=False)
    text = write_run_report(run).read_text()
    assert "eval.json" not in text and "24.68%" not in text
    assert f"{100 * _metrics(4)[-1]['val_top1_err']:.2f}%" in text
    (run / "config.yaml").unlink()
    (run / "metrics.jsonl").unlink()
    text = write_run_report(run).read_text()
    assert "](curves.png)" in text and "## Environment" in text
    with pytest.raises(UserError):
        write_run_report(tmp_path / "missing")


def test_read_metrics_rejects_bad_middle_line(tmp_path: Path) -> None:
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(UserError, match="metrics.jsonl:2"):
        read_metrics(p)


def test_prediction_samples_spread_over_classes() -> None:
    from alexnet.report.run import prediction_samples

    labels = np.arange(1000) % 10  # class-interleaved, as the built-in val split: a stride would hit 2 classes
    pick = prediction_samples(labels, 8)
    assert len(pick) == 8 and len(set(labels[pick].tolist())) == 8
    assert pick == prediction_samples(labels, 8)  # deterministic
    few = np.array([0, 0, 1, 1, 1])
    assert sorted(prediction_samples(few, 4)) == [0, 1, 2, 3] and set(few[prediction_samples(few, 4)[:2]]) == {0, 1}
