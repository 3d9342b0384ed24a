"""`alexnet experiment`: every experiment at the hidden test scale on a tiny synthetic dataset
writes report.md, a PNG and results.json rows; reruns skip finished runs; the ReLU/tanh ratio logic;
the HOG + SVM baseline; the depth ablation's layer removal; unknown names exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet import models
from alexnet.cli import main
from alexnet.experiments import names, run_experiment
from alexnet.experiments.relu_vs_tanh import epochs_to_reach, speedup

REQUIRED = ("variant", "top1_err", "top5_err")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from alexnet.data.sources import synthetic

    return synthetic.build(tmp_path_factory.mktemp("data") / "tiny", size=36, train_per_class=20, val_per_class=5)


def _run(name: str, data: Path, out: Path, **kw: object) -> Path:
    return run_experiment(name, str(data), out, scale="test", device="cpu", workers=0, log=lambda s: None, **kw)  # type: ignore[arg-type]


def _check_outputs(out: Path) -> list[dict]:
    report = (out / "report.md").read_text()
    assert "paper" in report.lower() and "## Machine" in report and "torch" in report
    assert list(out.glob("*.png")), "no plot"
    rows = json.loads((out / "results.json").read_text())
    assert rows and all(all(k in r for k in REQUIRED) for r in rows)
    for r in rows:
        for k in ("top1_err", "top5_err"):
            assert r[k] is None or 0.0 <= r[k] <= 1.0
    return rows


@pytest.mark.parametrize("name", [n for n in names() if n not in ("relu-vs-tanh", "baselines")])
def test_experiment_writes_report_plot_and_rows(name: str, tiny: Path, tmp_path: Path) -> None:
    _run(name, tiny, tmp_path / name)
    rows = _check_outputs(tmp_path / name)
    variants = {r["variant"] for r in rows}
    assert len(variants) >= 2, variants
    if name == "ensemble":
        assert any(r["variant"].startswith("ensemble-") for r in rows)
    if name == "dropout":
        assert all("gap_top1" in r for r in rows)


def test_relu_vs_tanh_and_rerun_skips(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "rvt"
    _run("relu-vs-tanh", tiny, out)
    rows = _check_outputs(out)
    assert {r["activation"] for r in rows} == {"relu", "tanh"}
    assert all("epochs_to_25" in r and "ratio_kind" in r for r in rows)
    assert sum(r["best_lr"] for r in rows) == 2  # one best rate per activation
    weights = sorted(out.glob("runs/*/model.safetensors"))
    stamps = {p: p.stat().st_mtime_ns for p in weights}
    logs: list[str] = []
    run_experiment("relu-vs-tanh", str(tiny), out, scale="test", device="cpu", workers=0, log=logs.append)
    assert {p: p.stat().st_mtime_ns for p in weights} == stamps  # nothing retrained
    assert logs and all("skipped" in s for s in logs)
    assert json.loads((out / "results.json").read_text()) == rows


def test_interrupted_run_resumes(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "lrn"
    _run("lrn", tiny, out)
    victim = next(iter(sorted(out.glob("runs/*"))))
    (victim / "summary.json").unlink()  # as if killed after its last checkpoint
    (victim / "model.safetensors").unlink()
    logs: list[str] = []
    run_experiment("lrn", str(tiny), out, scale="test", device="cpu", workers=0, log=logs.append)
    assert any("resuming" in s and victim.name in s for s in logs)
    assert (victim / "summary.json").is_file()


def test_changed_config_in_same_folder_is_refused(tiny: Path, tmp_path: Path) -> None:
    from alexnet.errors import UserError

    out = tmp_path / "pool"
    _run("pooling", tiny, out)
    with pytest.raises(UserError, match="different config"):
        run_experiment("pooling", str(tiny), out, scale="quick", device="cpu", workers=0, log=lambda s: None)


def test_epochs_to_reach() -> None:
    m = [{"epoch": 1, "train_top1_err": 0.6, "time_s": 1.0}, {"epoch": 2, "train_top1_err": 0.25, "time_s": 2.5},
         {"epoch": 3, "train_top1_err": 0.1, "time_s": 4.0}]
    assert epochs_to_reach(m) == (2, 2.5)
    assert epochs_to_reach(m[:1]) == (None, None)


def test_speedup_handles_not_reached() -> None:
    assert speedup(2, 12, 20, 20) == {"ratio": 6.0, "kind": "exact", "text": "6.00×"}
    lower = speedup(4, None, 20, 20)  # tanh never got there in 20 epochs: more than 20 / 4
    assert lower["kind"] == "lower" and lower["ratio"] == 5.0 and lower["text"].startswith(">")
    upper = speedup(None, 3, 20, 20)  # ReLU never got there: the ratio is below 3 / 20
    assert upper["kind"] == "upper" and math.isclose(upper["ratio"], 0.15) and upper["text"].startswith("<")
    none = speedup(None, None, 20, 20)
    assert none["kind"] == "none" and none["ratio"] is None


def test_baselines_runs_every_method(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "base"
    _run("baselines", tiny, out)
    rows = _check_outputs(out)
    by = {r["variant"]: r for r in rows}
    assert set(by) >= {"hog-svm", "lenet5", "alexnet-cifar"}
    hog = by["hog-svm"]
    assert hog["features"] > 0 and hog["time_s"] > 0 and hog["train_images"] == 200
    assert hog["top5_err"] <= hog["top1_err"]
    assert all(by[m]["params"] > 0 for m in ("lenet5", "alexnet-cifar"))


def test_hog_svm_learns_oriented_gratings(tmp_path: Path) -> None:
    """Eight classes of gratings at eight orientations (random phase, frequency and noise): the
    orientation is exactly what HOG measures, so HOG + a linear SVM must be far better than chance."""
    from alexnet.data.format import write_arrays
    from alexnet.experiments.baselines import hog_svm

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:36, 0:36].astype(np.float32)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 8
        imgs = []
        for c in labels:
            t = np.pi * c / 8
            f = rng.uniform(0.3, 0.6)
            g = np.sin(f * (xx * np.cos(t) + yy * np.sin(t)) + rng.uniform(0, 2 * np.pi))
            g = 127 + 100 * g + rng.normal(0, 20, g.shape)
            imgs.append(np.repeat(g.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2))
        return np.stack(imgs), labels

    root = write_arrays(tmp_path / "gratings", {"train": split(160), "val": split(80)}, classes=[f"c{i}" for i in range(8)])
    r = hog_svm(root, np.arange(160), np.arange(80), 8)
    assert r["top1_err"] < 0.2, r  # chance: 87.5%
    assert r["top5_err"] <= r["top1_err"]


def test_towers_widths() -> None:
    from alexnet.experiments.towers import halved

    assert halved("alexnet") == [48, 128, 192, 192, 256]  # the paper's footnote: last conv kept
    assert halved("alexnet-cifar") == [16, 16, 32]


def test_cli_unknown_experiment_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["experiment", "resnet", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'resnet'" in err and "relu-vs-tanh" in err and "baselines" in err


def test_cli_runs_an_experiment(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ALEXNET_EXPERIMENT_SCALE", "test")
    out = tmp_path / "cli"
    assert main(["experiment", "towers", "--data", str(tiny), "--out", str(out), "--device", "cpu", "--workers", "0"]) == 0
    assert "report.md" in capsys.readouterr().out
    rows = _check_outputs(out)
    assert {r["variant"] for r in rows} == {"two-towers", "one-tower-half"}
    assert main(["experiment", "towers", "--data", str(tiny), "--out", str(out), "--seeds", "0"]) == 2


def test_summary_statistics() -> None:
    from alexnet.experiments.runner import aggregate, mean_std, pm

    m, s, n = mean_std([0.1, 0.3, None])
    assert n == 2 and math.isclose(m, 0.2) and math.isclose(s, float(np.std([0.1, 0.3], ddof=1)))
    assert mean_std([0.4]) == (0.4, None, 1)
    assert pm(0.407, 0.0031) == "40.70 ± 0.31%" and pm(None, None) == "—"
    agg = aggregate([{"variant": "a", "x": 1.0}, {"variant": "a", "x": 3.0}, {"variant": "b", "x": 2.0}], ["x"])
    assert [a["variant"] for a in agg] == ["a", "b"] and agg[0]["x_mean"] == 2.0 and agg[1]["x_std"] is None


def test_retry_stuck_retrains_only_the_arm_at_chance_at_a_lower_rate() -> None:
    from alexnet.experiments.ablation import RETRY_LR_FACTOR, retry_stuck
    from alexnet.experiments.runner import Variant

    class FakeRunner:
        scale = "quick"

        def __init__(self) -> None:
            self.trained: list[Variant] = []

        def train_all(self, base, variants):
            self.trained += variants
            return [{"variant": v.name, "seed": 0, "top1_err": 0.3, **v.fields} for v in variants]

    ref, stuck = Variant("ref", {}, {}), Variant("none", {"model_options": {"lrn": "none"}}, {"lrn": "none"})
    rows = [{"variant": "ref", "seed": 0, "top1_err": 0.2}, {"variant": "none", "seed": 0, "top1_err": 0.9}]
    runner = FakeRunner()
    out, retried = retry_stuck(runner, {"lr": 0.02}, [ref, stuck], rows, chance=0.9)
    assert retried == {"none": (0.02, 0.02 * RETRY_LR_FACTOR)}
    assert [v.overrides.get("lr") for v in runner.trained] == [0.02 * RETRY_LR_FACTOR]
    assert runner.trained[0].overrides["model_options"] == {"lrn": "none"}  # the arm itself, only the rate changes
    assert [r["variant"] for r in out] == ["ref", "none"]
    assert out[1]["top1_err"] == 0.3 and out[1]["retried_from_lr"] == 0.02
    # Nothing at chance, or the test scale: nothing retrained.
    runner2 = FakeRunner()
    assert retry_stuck(runner2, {"lr": 0.02}, [ref, stuck], rows[:1], chance=0.9) == (rows[:1], {})
    runner2.scale = "test"
    assert retry_stuck(runner2, {"lr": 0.02}, [ref, stuck], rows, chance=0.9) == (rows, {})
    assert runner2.trained == []
