"""`alexnet experiment`: every experiment at the hidden test scale on a tiny synthetic dataset
writes report.md, a PNG and results.json rows; reruns skip finished runs; every arm gets the same
learning-rate sweep, seeds, epochs and schedule and no arm is retrained alone; Welch's interval and
the "within seed noise" verdict; Figure 1's net (no regularisation, cuda-convnet's layers and init,
raw input) and its training error over the whole training set; the ReLU/tanh ratio logic; the SIFT +
Fisher vector and HOG + SVM baselines; the depth ablation's layer removal; unknown names exit 2."""

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


def _configs(out: Path) -> dict[str, dict]:
    import yaml

    return {p.parent.name: yaml.safe_load(p.read_text()) for p in sorted(out.glob("runs/*/config.yaml"))}


@pytest.mark.parametrize("name", [n for n in names() if n not in ("relu-vs-tanh", "baselines", "data-scale")])
def test_experiment_writes_report_plot_and_rows(name: str, tiny: Path, tmp_path: Path) -> None:
    # One seed (the sweep's) keeps this smoke test short; the ensemble needs two nets.
    _run(name, tiny, tmp_path / name, seeds=2 if name == "ensemble" else 1)
    rows = _check_outputs(tmp_path / name)
    variants = {r["variant"] for r in rows}
    assert len(variants) >= 2, variants
    report = (tmp_path / name / "report.md").read_text()
    from alexnet.experiments.summary import lines

    summary = lines(tmp_path / name)  # README's table, generated from what the experiment wrote
    assert summary and all(ln["ours"] != "—" and ln["verdict"] for ln in summary), summary
    if name == "ensemble":
        assert any(r["variant"].startswith("ensemble-") for r in rows)
        assert "[95% CI over the nets]" in report
        # One denominator: every row (members and averages) on the report half of the validation images.
        from alexnet.data.format import PreparedDataset
        from alexnet.engine.evaluate import selection_half

        assert {r["images"] for r in rows} == {int((~selection_half(PreparedDataset(tiny, "val").labels)).sum())}
        return
    if name == "dropout":
        assert all("gap_top1" in r for r in rows)
    # Every arm at every rate of one sweep, the same epochs and schedule.
    arms = {r["arm"] for r in rows}
    assert len(arms) >= 2
    plans = {a: sorted((r["lr"], r["seed"]) for r in rows if r["arm"] == a) for a in arms}
    assert len({tuple(p) for p in plans.values()}) == 1, plans
    assert len({r["lr"] for r in rows}) == 2
    cfgs = _configs(tmp_path / name).values()
    for key in ("epochs", "schedule", "step_epochs", "batch_size", "train_subset", "max_steps_per_epoch"):
        assert len({json.dumps(c[key]) for c in cfgs}) == 1, key
    assert "## Learning-rate sweep" in report and "chosen rate" in report


def test_relu_vs_tanh_and_rerun_skips(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "rvt"
    _run("relu-vs-tanh", tiny, out)
    rows = _check_outputs(out)
    assert {r["activation"] for r in rows} == {"relu", "tanh"}
    assert all("epochs_to_threshold" in r and "ratio_kind" in r for r in rows)
    # The sweep on seed 0, then seed 1 at each activation's best rate: one best rate per activation.
    assert {(r["activation"], r["lr"]) for r in rows if r["best_lr"]} == {(a, r["chosen_lr"]) for r in rows for a in [r["activation"]]}
    assert sorted(r["seed"] for r in rows if r["best_lr"]) == [0, 0, 1, 1]
    assert {r["threshold"] for r in rows} == {0.25}
    for name, c in _configs(out).items():  # no regularisation of any kind, the Figure-1 net
        assert c["weight_decay"] == 0 and c["pca_std"] == 0 and c["label_smoothing"] == 0, name
        assert not c["random_crop"] and not c["flip"] and c["schedule"] == "constant", name
        mo = c["model_options"]
        assert mo["lrn"] == "none" and mo["dropout"] == 0 and mo["init"] == "paper", name
        assert mo["input_norm"] == "mean_image" and mo["pooling"] == "cuda-convnet", name
    weights = sorted(out.glob("runs/*/model.safetensors"))
    stamps = {p: p.stat().st_mtime_ns for p in weights}
    logs: list[str] = []
    run_experiment("relu-vs-tanh", str(tiny), out, scale="test", device="cpu", workers=0, log=logs.append)
    assert {p: p.stat().st_mtime_ns for p in weights} == stamps  # nothing retrained
    assert logs and all("skipped" in s for s in logs)
    assert json.loads((out / "results.json").read_text()) == rows
    _measure_then_report("relu-vs-tanh", tiny, out, rows)


def _measure_then_report(name: str, data: Path, out: Path, rows: list[dict]) -> None:
    """Measuring apart from reporting, on an experiment's finished runs: ``measure`` returns its
    Result and writes nothing; ``report`` writes results.json and report.md from that Result alone."""
    import importlib

    from alexnet.experiments import info
    from alexnet.experiments.runner import Runner

    mod = importlib.import_module(info(name).module)
    runner = Runner(name, str(data), out, seeds=2, scale="test", device="cpu", workers=0, log=lambda s: None)
    (out / "report.md").unlink()
    (out / "results.json").unlink()
    result = mod.measure(runner)
    assert isinstance(result, mod.Result)
    assert not (out / "report.md").exists() and not (out / "results.json").exists()
    assert mod.report(runner, result) == out / "report.md" and (out / "report.md").is_file()
    assert [r["variant"] for r in json.loads((out / "results.json").read_text())] == [r["variant"] for r in rows]


def test_interrupted_run_resumes(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "lrn"
    _run("lrn", tiny, out)
    # Two seeds at the test scale: both arms at both rates on seed 0, then each at its chosen rate
    # on seed 1 — six runs, whatever the arms' errors; nothing else.
    rows = json.loads((out / "results.json").read_text())
    plan = sorted((r["arm"], r["lr"], r["seed"]) for r in rows)
    chosen = {r["arm"]: r["chosen_lr"] for r in rows}
    rates = rows[0]["sweep_rates"]
    assert len(rates) == 2 and all(r["sweep_rates"] == rates for r in rows)
    assert plan == sorted([(a, lr, 0) for a in ("lrn-paper", "lrn-none") for lr in rates]
                          + [(a, chosen[a], 1) for a in ("lrn-paper", "lrn-none")])
    assert len(list(out.glob("runs/*/summary.json"))) == 6
    none_rows = [r for r in rows if r["arm"] == "lrn-none"]
    assert all("delta_top1_vs_reference" in r and "verdict" in r for r in none_rows)
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
    # Another scale is another protocol: refused before any run is looked at.
    with pytest.raises(UserError, match="another protocol"):
        run_experiment("pooling", str(tiny), out, scale="quick", device="cpu", workers=0, log=lambda s: None)
    # The same protocol with a run whose config differs (here: a changed recipe field): refused too.
    import yaml

    cfg = next(iter(sorted(out.glob("runs/*/config.yaml"))))
    d = yaml.safe_load(cfg.read_text())
    d["momentum"] = 0.5
    cfg.write_text(yaml.safe_dump(d))
    with pytest.raises(UserError, match="different config"):
        _run("pooling", tiny, out)


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
    by = {r["arm"]: r for r in rows if r["chosen"] and r["seed"] == 0}  # each method at its chosen rate / C
    assert set(by) == {"sift-fv-svm", "hog-svm", "lenet5", "alexnet-cifar"}
    for arm in ("sift-fv-svm", "hog-svm"):
        classic = by[arm]
        assert classic["features"] > 0 and classic["time_s"] > 0 and classic["train_images"] == 200
        assert classic["top5_err"] <= classic["top1_err"]
    assert by["sift-fv-svm"]["features"] == 4 * 2 * 32 * 32  # 1×1 + 3×1 pyramid × (means, variances) × K × D
    assert all(by[m]["params"] > 0 for m in ("lenet5", "alexnet-cifar"))
    # The same seeds for every method; the SVM's C swept like the CNNs' rates.
    assert {(r["arm"], r["seed"]) for r in rows if r["chosen"]} == {(m, s) for m in by for s in (0, 1)}
    assert sorted(r["C"] for r in rows if r["arm"] == "hog-svm" and r["seed"] == 0) == [0.001, 0.01, 0.1]
    assert sorted(r["lambda"] for r in rows if r["arm"] == "sift-fv-svm" and r["seed"] == 0) == [1e-5, 1e-4, 1e-3]
    assert {r["verdict"] for r in rows if r["arm"] in ("sift-fv-svm", "hog-svm")} <= {"not resolved at this scale", "in the paper's direction",
                                                                      "against the paper's direction"}
    _measure_then_report("baselines", tiny, out, rows)


def test_hog_svm_learns_oriented_gratings(tmp_path: Path) -> None:
    """Eight classes of gratings at eight orientations (random phase, frequency and noise): the
    orientation is exactly what HOG measures, so HOG + a linear SVM must be far better than chance."""
    from alexnet.data.writer import write_arrays
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
    assert {r["arm"] for r in rows} == {"two-towers", "one-tower-half"}
    assert main(["experiment", "towers", "--data", str(tiny), "--out", str(out), "--seeds", "0"]) == 2


def test_summary_statistics() -> None:
    from alexnet.experiments.runner import aggregate, mean_std, pm

    m, s, n = mean_std([0.1, 0.3, None])
    assert n == 2 and math.isclose(m, 0.2) and math.isclose(s, float(np.std([0.1, 0.3], ddof=1)))
    assert mean_std([0.4]) == (0.4, None, 1)
    assert pm(0.407, 0.0031) == "40.70 ± 0.31%" and pm(None, None) == "—"
    agg = aggregate([{"variant": "a", "x": 1.0}, {"variant": "a", "x": 3.0}, {"variant": "b", "x": 2.0}], ["x"])
    assert [a["variant"] for a in agg] == ["a", "b"] and agg[0]["x_mean"] == 2.0 and agg[1]["x_std"] is None


# -- fair comparisons ------------------------------------------------------------------------------


def _fake_runner(tiny: Path, tmp_path: Path, seeds: int, scale: str = "quick"):
    """A Runner whose ``train`` records what it is asked to train instead of training."""
    from alexnet.experiments.runner import Runner

    runner = Runner("fake", str(tiny), tmp_path / "fake", seeds=seeds, scale=scale, device="cpu", log=lambda s: None)
    runner.trained = []  # type: ignore[attr-defined]

    def train(base, variant, seed):  # noqa: ANN001
        runner.trained.append((variant.fields["arm"], variant.overrides["lr"], seed,  # type: ignore[attr-defined]
                               json.dumps(variant.overrides.get("model_options", {}), sort_keys=True)))
        return {"variant": variant.name, "seed": seed, **variant.fields, "run": f"runs/{variant.name}-s{seed}",
                "epochs": base.get("epochs")}

    runner.train = train  # type: ignore[method-assign]
    return runner


def test_sweep_gives_every_arm_the_same_rates_and_seeds_and_retrains_no_arm_alone(tiny: Path, tmp_path: Path) -> None:
    from alexnet.experiments.runner import Variant

    # The "none" arm sits at chance at every rate (a dead net): it is not retrained at another rate.
    err = {("ref", 0.005): 0.30, ("ref", 0.02): 0.20, ("none", 0.005): 0.40, ("none", 0.02): 0.90}

    def measure(r: dict) -> None:
        r["select_top1_err"] = err[(r["arm"], r["lr"])]

    runner = _fake_runner(tiny, tmp_path, seeds=3)
    arms = [Variant("ref", {"model_options": {"lrn": "paper"}}, {}), Variant("none", {"model_options": {"lrn": "none"}}, {})]
    sw = runner.sweep({"lr": 0.02, "epochs": 6}, arms, measure=measure)
    assert sw.rates == (0.005, 0.02) and sw.sweep_seeds == [0]
    assert sw.best == {"ref": 0.02, "none": 0.005}  # each arm at its own best rate
    trained = [(a, lr, seed) for a, lr, seed, _ in runner.trained]  # type: ignore[attr-defined]
    assert sorted(trained) == sorted([(a, lr, 0) for a in ("ref", "none") for lr in (0.005, 0.02)]
                                     + [("ref", 0.02, s) for s in (1, 2)] + [("none", 0.005, s) for s in (1, 2)])
    assert len(set(trained)) == len(trained)  # nothing trained twice
    # Each arm keeps its own options at every rate; only the rate changes.
    assert {opts for a, _, _, opts in runner.trained if a == "none"} == {'{"lrn": "none"}'}  # type: ignore[attr-defined]
    assert [r["seed"] for r in sw.chosen("ref")] == [0, 1, 2] and [r["seed"] for r in sw.chosen("none")] == [0, 1, 2]
    assert all(r["sweep_rates"] == [0.005, 0.02] and r["chosen_lr"] == sw.best[r["arm"]] for r in sw.rows)
    assert "**20.00%**" in sw.table(lambda v: f"{100 * v:.2f}%")


def test_full_scale_sweeps_every_seed_over_a_wider_range(tiny: Path, tmp_path: Path) -> None:
    from alexnet.experiments.runner import Variant

    from alexnet.experiments.runner import MAX_EXTEND, seed_base

    runner = _fake_runner(tiny, tmp_path, seeds=3, scale="full")
    b = seed_base("fake", "full")
    # Lower is always better here: the grid extends downwards MAX_EXTEND times, then says "not bracketed".
    sw = runner.sweep({"lr": 0.02}, [Variant("a"), Variant("b")], measure=lambda r: r.update(select_top1_err=r["lr"]))
    assert sw.rates[-4:] == (0.005, 0.01, 0.02, 0.04) and sw.sweep_seeds == [b, b + 1, b + 2]
    # Rates beyond the grid keep two significant digits (0.00125 -> 0.0013).
    assert sw.extended["a"] == [0.0025, 0.0013, 0.00065] and sw.bracketed == {"a": False, "b": False}
    assert len(runner.trained) == 2 * (4 + MAX_EXTEND) * 3  # type: ignore[attr-defined]
    assert sw.best == {"a": 0.00065, "b": 0.00065}
    assert "**Not bracketed**" in sw.text()


def test_medium_sweep_extends_until_the_chosen_rate_is_bracketed(tiny: Path, tmp_path: Path) -> None:
    from alexnet.experiments.runner import Variant, seed_base

    runner = _fake_runner(tiny, tmp_path, seeds=3, scale="medium")
    b = seed_base("fake", "medium")
    assert runner.seeds == [b, b + 1, b + 2] and b >= 1000
    # The best rate is 0.08: above the grid (0.01, 0.02, 0.04) for arm "a"; inside it for arm "m".
    err = lambda r: abs(math.log(r["lr"] / (0.08 if r["arm"] == "a" else 0.02)))  # noqa: E731
    sw = runner.sweep({"lr": 0.02}, [Variant("a"), Variant("m")], measure=lambda r: r.update(select_top1_err=err(r)))
    assert sw.extended == {"a": [0.08, 0.16], "m": []} and sw.bracketed == {"a": True, "m": True}
    assert sw.best == {"a": 0.08, "m": 0.02}
    trained = sorted((a, lr, seed) for a, lr, seed, _ in runner.trained)  # type: ignore[attr-defined]
    assert trained == sorted([("a", lr, b) for lr in (0.01, 0.02, 0.04, 0.08, 0.16)] + [("m", lr, b) for lr in (0.01, 0.02, 0.04)]
                             + [("a", 0.08, s) for s in (b + 1, b + 2)] + [("m", 0.02, s) for s in (b + 1, b + 2)])
    rows = {r["arm"]: r for r in sw.rows}
    assert rows["a"]["sweep_extended"] == [0.08, 0.16] and rows["a"]["sweep_rates"] == [0.01, 0.02, 0.04, 0.08, 0.16]
    assert rows["m"]["bracketed"] is True and "extended to 0.08, 0.16" in sw.text()


def test_experiments_draw_independent_seeds_at_medium_and_full_scale() -> None:
    from alexnet.experiments.runner import seed_base

    for scale in ("medium", "full"):
        assert "data-scale" in names()
        bases = [seed_base(n, scale) for n in names()]
        # Each experiment's seeds (base … base + 9) overlap no other's.
        assert all(abs(x - y) >= 10 for i, x in enumerate(bases) for y in bases[i + 1:])
    assert seed_base("lrn", "quick") == seed_base("pooling", "test") == 0


def test_sweep_ties_go_to_the_tie_breaker_then_the_lower_rate(tiny: Path, tmp_path: Path) -> None:
    from alexnet.experiments.runner import Variant

    runner = _fake_runner(tiny, tmp_path, seeds=1)
    sw = runner.sweep({"lr": 0.02}, [Variant("a")], rates=(0.01, 0.02, 0.04), score=lambda r: 5.0,
                      tie=lambda r: {0.01: 0.3, 0.02: 0.1, 0.04: 0.1}[r["lr"]], measure=lambda r: None)
    assert sw.best == {"a": 0.02}


def test_welch_matches_scipy_and_the_hand_computation() -> None:
    from scipy import stats as sps

    from alexnet.experiments.stats import welch

    d = welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    # diff 3, se = sqrt(1/3 + 1/3), Welch df = 4, t_0.975(4) = 2.7764
    assert d.diff == pytest.approx(3.0) and d.df == pytest.approx(4.0)
    half = 2.7764451051977987 * math.sqrt(2 / 3)
    assert (d.low, d.high) == (pytest.approx(3 - half), pytest.approx(3 + half))
    a, b = [0.21, 0.25, 0.19, 0.30], [0.27, 0.35, 0.31]
    d = welch(a, b)
    ref = sps.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert d.p == pytest.approx(ref.pvalue) and d.low == pytest.approx(ci.low) and d.high == pytest.approx(ci.high)
    assert d.text() == "+7.25 [-1.43, +15.93], p = 0.084; MDE 11.76"  # points: 100 × (0.31 − 0.2375)


def test_verdicts_say_within_seed_noise_and_the_direction() -> None:
    from alexnet.experiments.stats import AGAINST, NO_SPREAD, PAPER_DIRECTION, WITHIN_NOISE, one_sample, welch

    noisy = welch([0.20, 0.30], [0.22, 0.27])
    assert noisy.within_noise and noisy.verdict(+1.0) == WITHIN_NOISE == "not resolved at this scale"
    # The minimum detectable effect: (t_0.975 + t_0.80) · se at the Welch df.
    from scipy import stats as sps

    se = math.sqrt(0.005 / 2 + 0.00125 / 2)
    assert noisy.mde == pytest.approx((sps.t.ppf(0.975, noisy.df) + sps.t.ppf(0.8, noisy.df)) * se)
    assert noisy.text().endswith(f"; MDE {100 * noisy.mde:.2f}")
    clear = welch([0.10, 0.11, 0.12], [0.20, 0.21, 0.22])  # b worse by 10 points, every seed
    assert not clear.within_noise and clear.low > 0
    assert clear.verdict(+1.0) == PAPER_DIRECTION and clear.verdict(-1.0) == AGAINST
    one = welch([0.1], [0.2])
    assert one.diff == pytest.approx(0.1) and not one.tested and one.verdict(+1.0) == NO_SPREAD
    assert welch([], [0.2]).verdict() == "—"
    exact = welch([0.1, 0.1], [0.2, 0.2])  # no spread at all, a real difference
    assert exact.verdict(+1.0) == PAPER_DIRECTION
    g = one_sample([-0.03, -0.02, -0.04])
    assert g.diff == pytest.approx(-0.03) and g.high < 0 and g.verdict(-1.0) == PAPER_DIRECTION


def test_selection_half_is_class_balanced_whatever_the_order() -> None:
    from alexnet.experiments.runner import selection_half

    for labels in (np.arange(40) % 4, np.repeat(np.arange(4), 10)):  # interleaved, sorted
        sel = selection_half(labels)
        assert sel.sum() == 20
        for c in range(4):
            assert sel[labels == c].sum() == 5


def test_factors_are_refused_for_other_experiments(tiny: Path, tmp_path: Path) -> None:
    from alexnet.errors import UserError

    with pytest.raises(UserError, match="--factors applies to experiment 'relu-vs-tanh' only"):
        _run("lrn", tiny, tmp_path / "x", factors=True)


# -- Figure 1 ------------------------------------------------------------------------------------


def test_figure1_net_is_cuda_convnets_without_regularisation() -> None:
    from torch import nn

    from alexnet.experiments.relu_vs_tanh import FIGURE1_NET, SWEEP_FULL, SWEEP_QUICK

    torch.manual_seed(0)
    for act, cls in (("relu", nn.ReLU), ("tanh", nn.Tanh)):
        net = models.create("alexnet-cifar", 10, **FIGURE1_NET, activation=act)
        kinds = [type(m).__name__ for m in net.features]
        assert kinds == ["Conv2d", cls.__name__, "MaxPool2d", "Conv2d", cls.__name__, "AvgPool2d",
                         "Conv2d", cls.__name__, "AvgPool2d"]
        assert not any(isinstance(m, (nn.Dropout, models.LocalResponseNorm, nn.LocalResponseNorm)) for m in net.modules())
        convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
        assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (5, 5)), (32, (5, 5)), (64, (5, 5))]
        fcs = [m for m in net.modules() if isinstance(m, nn.Linear)]
        assert len(fcs) == 1 and fcs[0].out_features == 10
        # cuda-convnet's initW: 1e-4 in conv1, 1e-2 elsewhere; biases 0.
        assert convs[0].weight.std().item() == pytest.approx(1e-4, rel=0.1)
        for m in convs[1:] + fcs:
            assert m.weight.std().item() == pytest.approx(1e-2, rel=0.1)
        assert all(float(m.bias.detach().abs().max()) == 0.0 for m in convs + fcs)
        assert net(torch.randn(2, 3, 32, 32) * 60).shape == (2, 10)
    assert models.input_norm("alexnet-cifar", FIGURE1_NET) == "mean_image"  # raw 0–255 minus the mean image
    assert models.input_norm("alexnet-cifar", {}) == "mean_image_std"
    for sweep in (SWEEP_QUICK, SWEEP_FULL):  # at least five rates over two decades
        assert len(sweep) >= 5 and max(sweep) / min(sweep) >= 100


def test_cifar_net_init_gain_and_options_are_checked() -> None:
    from torch import nn

    torch.manual_seed(0)
    net = models.create("alexnet-cifar", 10, init="paper", init_gain=10.0, lrn="none")
    conv1 = next(m for m in net.features if isinstance(m, nn.Conv2d))
    assert conv1.weight.std().item() == pytest.approx(1e-3, rel=0.1)
    for bad in ({"pooling": "mean"}, {"input_norm": "raw"}, {"init_gain": 0.0}, {"init": "torch", "init_gain": 2.0}):
        with pytest.raises(ValueError):
            models.create("alexnet-cifar", 10, **bad)


def test_figure1_training_error_covers_the_whole_training_set(tiny: Path, tmp_path: Path) -> None:
    """The quick and full configs train on every image each epoch (no subset, no step limit, a batch
    dividing the set), and the engine's running error then counts every training image; the
    weights record the raw input scale."""
    from safetensors import safe_open

    from alexnet.config import TrainConfig
    from alexnet.engine.train import run as train_run
    from alexnet.experiments.relu_vs_tanh import BATCH, FIGURE1_NET, FULL, NO_REGULARISATION, QUICK
    from alexnet.engine.metrics import read_metrics

    for scale in (QUICK, FULL):
        assert scale["train_subset"] == 0 and scale["max_steps_per_epoch"] == 0 and scale["batch_size"] == BATCH
    assert 5000 % BATCH == 0 and 50000 % BATCH == 0  # the built-in set and CIFAR-10
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), "model": "alexnet-cifar", "data": str(tiny), "device": "cpu",
                                 "workers": 0, "progress": False, "epochs": 1, "lr": 0.01, **NO_REGULARISATION,
                                 **{k: v for k, v in QUICK.items() if k != "epochs"},
                                 "model_options": {**FIGURE1_NET, "activation": "tanh"}})
    train_run(cfg, tmp_path / "run", log=lambda s: None)
    (m,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert m["train_images"] == 200  # 10 classes × 20: every training image once
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["alexnet"])["input_norm"] == "mean_image"


def test_ratio_stats_pairs_seeds_and_bounds_not_reached() -> None:
    from alexnet.experiments.relu_vs_tanh import ratio_stats
    from alexnet.experiments.runner import Sweep

    def row(act: str, seed: int, ep: int | None) -> dict:
        return {"arm": act, "activation": act, "seed": seed, "lr": 0.01, "chosen": True, "epochs_to_threshold": ep,
                "reached": ep is not None, "time_to_threshold_s": None if ep is None else ep * 2.0, "time_s": 20.0,
                "epochs": 10, "train_top1_err": 0.1}

    rows = [row("relu", 0, 2), row("tanh", 0, 8), row("relu", 1, 2), row("tanh", 1, 12)]
    sw = Sweep(rows, ["relu", "tanh"], (0.01,), [0], [0, 1], {"relu": 0.01, "tanh": 0.01}, {}, "")
    st = ratio_stats(sw, 10)
    assert [p["ratio"] for p in st["per_seed"]] == [4.0, 6.0]
    assert st["ratio_mean"] == pytest.approx(5.0) and st["ratio_std"] == pytest.approx(math.sqrt(2))
    assert st["ratio_of_means"]["ratio"] == pytest.approx(5.0)
    # The decision rule on the log ratios: log 4 and log 6, t interval with 1 df, excludes 0.
    lo, hi = st["log_ratio"].low, st["log_ratio"].high
    half = 12.706204736174704 * abs(math.log(6) - math.log(4)) / 2
    m = (math.log(4) + math.log(6)) / 2
    assert (lo, hi) == (pytest.approx(m - half), pytest.approx(m + half))
    assert st["verdict"] == ("in the paper's direction" if lo > 0 else "not resolved at this scale")
    rows[3]["epochs_to_threshold"], rows[3]["reached"] = None, False  # tanh seed 1 never got there in 10 epochs
    st = ratio_stats(sw, 10)
    assert st["per_seed"][1]["kind"] == "lower" and st["ratio_mean"] is None
    assert st["ratio_of_means"]["kind"] == "lower"  # not all tanh seeds reached it: a bound
    assert st["verdict"].startswith("not resolved at this scale") and st["log_ratio"] is None


@pytest.mark.slow
def test_relu_vs_tanh_factor_study(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet.experiments import relu_vs_tanh

    monkeypatch.setattr(relu_vs_tanh, "FACTORS", {"lrn": relu_vs_tanh.FACTORS["lrn"]})  # one factor keeps it short
    out = tmp_path / "rvt-f"
    _run("relu-vs-tanh", tiny, out, seeds=1, factors=True)
    rows = _check_outputs(out)
    assert {r["setting"] for r in rows} == {"figure1", "lrn"}
    cfgs = _configs(out)
    assert {c["model_options"]["lrn"] for n, c in cfgs.items() if n.startswith("lrn-")} == {"paper"}
    assert {c["model_options"]["lrn"] for n, c in cfgs.items() if not n.startswith("lrn-")} == {"none"}
    assert "one factor at a time" in (out / "report.md").read_text()


def test_a_diverging_rate_is_a_failed_run_not_an_error(tiny: Path, tmp_path: Path) -> None:
    """A rate of the sweep at which the net diverges is recorded (chance-level error) and loses the
    selection; the experiment goes on, and a rerun does not train it again."""
    from alexnet.experiments.runner import Runner, Variant

    logs: list[str] = []
    runner = Runner("div", str(tiny), tmp_path / "div", seeds=1, scale="test", device="cpu", workers=0, log=logs.append)
    base = runner.base_config("alexnet-cifar")
    sw = runner.sweep(base, [Variant("a")], rates=(0.01, 1e9))
    by = {r["lr"]: r for r in sw.rows}
    assert by[1e9]["diverged"] and by[1e9]["select_top1_err"] == pytest.approx(0.9)
    assert not by[0.01]["diverged"] and sw.best == {"a": 0.01}
    assert any("diverged (" in s for s in logs)
    logs.clear()
    runner.sweep(base, [Variant("a")], rates=(0.01, 1e9))
    assert any("diverged earlier, skipped" in s for s in logs) and not any("training" in s for s in logs)


def test_augmentation_arms_are_what_they_say_on_32px_data(tmp_path: Path) -> None:
    """On images stored at the input size (CIFAR-10's 32×32) the cifar recipe pads for its random
    crops; the arm without augmentation takes no crops, so it must not carry an inert padding (a
    warning the experiment's log now shows)."""
    from alexnet.data.sources import synthetic

    data = synthetic.build(tmp_path / "d32", size=32, train_per_class=10, val_per_class=4)
    lines: list[str] = []
    run_experiment("augmentation", str(data), tmp_path / "out", scale="test", device="cpu", workers=0,
                   log=lines.append, seeds=1)
    assert not [s for s in lines if s.startswith("warning:")], lines
    cfgs = _configs(tmp_path / "out")
    assert {c["crop_padding"] for n, c in cfgs.items() if n.startswith("none-")} == {0}
    assert {c["crop_padding"] for n, c in cfgs.items() if n.startswith("crops-")} == {4}


def test_plateau_schedule_of_experiment_runs_reads_only_the_selection_half(tiny: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet.engine.evaluate import selection_half
    from alexnet.engine.metrics import read_metrics
    from alexnet.engine.optim import Schedule
    from alexnet.experiments.runner import Runner, Variant

    fed: list[float | None] = []
    orig = Schedule.end_of_epoch
    monkeypatch.setattr(Schedule, "end_of_epoch", lambda self, v: fed.append(v) or orig(self, v))
    runner = Runner("lrn", str(tiny), tmp_path, scale="test", device="cpu", workers=0, log=lambda s: None)
    base = runner.base_config(schedule="plateau", eval_every=1)
    assert base["plateau_on"] == "select"
    row = runner.train(base, Variant("v"), 0)
    metrics = read_metrics(tmp_path / row["run"] / "metrics.jsonl")
    assert len(fed) == len(metrics) == 2
    assert fed == [m["val_select_top1_err"] for m in metrics]
    # ... which is the selection half's error of the final weights, not the whole set's.
    runner.add_val_halves(row)
    assert fed[-1] == pytest.approx(row["select_top1_err"])
    from alexnet.data.format import PreparedDataset

    assert selection_half(PreparedDataset(tiny, "val").labels).sum() < len(PreparedDataset(tiny, "val"))


def test_report_marks_runs_from_a_dirty_tree_or_several_commits(tiny: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import alexnet.engine.run_folder as run_folder_mod
    import alexnet.experiments.runner as runner_mod
    from alexnet.environment import environment

    real = environment()

    def env(sha: str, dirty: bool):  # noqa: ANN202
        return lambda *a, **k: {**real, "git_sha": sha, "git_dirty": dirty}

    monkeypatch.setattr(run_folder_mod, "environment", env("a" * 40, True))
    monkeypatch.setattr(runner_mod, "environment", env("a" * 40, False))
    runner = runner_mod.Runner("prov", str(tiny), tmp_path, scale="test", device="cpu", workers=0, log=lambda s: None)
    base = runner.base_config()
    rows = [runner.train(base, runner_mod.Variant("v"), 0)]
    report = runner.write_report(title="t", claim="c", sections=[], base=base, rows=rows).read_text()
    assert "not citable" in report and "dirty tree" in report and "runs/v-s0" in report
    runner.write_results(rows)
    assert json.loads((tmp_path / "provenance.json").read_text())["citable"] is False
    # The same runs, clean, but the report from another commit: not one commit either.
    monkeypatch.setattr(run_folder_mod, "environment", env("a" * 40, False))
    rows.append(runner.train(base, runner_mod.Variant("w"), 0))
    (tmp_path / "runs/v-s0/environment.json").write_text(json.dumps({"git_sha": "a" * 40, "git_dirty": False}))
    monkeypatch.setattr(runner_mod, "environment", env("b" * 40, False))
    report = runner.write_report(title="t", claim="c", sections=[], base=base, rows=rows).read_text()
    assert "from 2 commits" in report
    monkeypatch.setattr(runner_mod, "environment", env("a" * 40, False))
    report = runner.write_report(title="t", claim="c", sections=[], base=base, rows=rows).read_text()
    assert f"commit `{'a' * 40}`, a clean tree" in report and "not citable" not in report
    assert "decision rule" in report  # the protocol, as written before the runs


def test_relu_vs_tanh_threshold_option_and_its_rule(tiny: Path, tmp_path: Path) -> None:
    from alexnet.experiments.relu_vs_tanh import THRESHOLD, threshold_for

    assert THRESHOLD == 0.25 and threshold_for("cifar10") == 0.25 and threshold_for("fashion-mnist") == 0.125
    out = tmp_path / "rvt"
    run_experiment("relu-vs-tanh", str(tiny), out, scale="test", device="cpu", workers=0, log=lambda s: None,
                   seeds=1, threshold=0.99)
    rows = json.loads((out / "results.json").read_text())
    assert {r["threshold"] for r in rows} == {0.99}
    # Any running error is at most 99%: every run reached it after its first epoch.
    assert all(r["epochs_to_threshold"] is not None for r in rows)
    assert json.loads((out / "protocol.json").read_text())["threshold"] == 0.99
    assert "epochs to 99%" in (out / "report.md").read_text()
    # The protocol is fixed: the same folder with another threshold is refused.
    from alexnet.errors import UserError

    with pytest.raises(UserError, match="another protocol"):
        run_experiment("relu-vs-tanh", str(tiny), out, scale="test", device="cpu", workers=0, log=lambda s: None,
                       seeds=1, threshold=0.5)
    with pytest.raises(UserError, match="threshold"):
        run_experiment("lrn", str(tiny), tmp_path / "l", scale="test", device="cpu", threshold=0.5)


def test_results_table_is_generated_from_results_json(tmp_path: Path) -> None:
    from alexnet.experiments.summary import table

    d = tmp_path / "lrn"
    d.mkdir()
    rows = [{"arm": "lrn-paper", "variant": f"lrn-paper-lr0.02", "seed": s, "chosen": True, "report_top1_err": e}
            for s, e in ((1, 0.10), (2, 0.12), (3, 0.11))]
    rows += [{"arm": "lrn-none", "variant": "lrn-none-lr0.02", "seed": s, "chosen": True, "report_top1_err": e,
              "reference": "lrn-paper", "delta_top1_vs_reference": 0.01, "delta_top1_ci95": [-0.01, 0.03],
              "delta_top1_mde": 0.025, "verdict": "not resolved at this scale", "paper": "+2.0 / — (CIFAR-10 test)"}
             for s, e in ((1, 0.11), (2, 0.13), (3, 0.12))]
    (d / "results.json").write_text(json.dumps(rows))
    (d / "protocol.json").write_text(json.dumps({"experiment": "lrn", "scale": "medium"}))
    (d / "provenance.json").write_text(json.dumps({"citable": True, "shas": ["0123456789abcdef"]}))
    text = table([d])
    assert "| claim (§) | the paper | ours | verdict |" in text
    assert ("lrn-none 12.00 ± 1.00% vs lrn-paper 11.00 ± 1.00% top-1; Δ +1.00 [-1.00, +3.00], MDE 2.50 points; "
            "n = 3, 3 seeds") in text
    assert "`lrn`, medium, git 0123456789ab" in text and "+2.0 / — (CIFAR-10 test)" in text
    assert "not resolved at this scale" in text
    (d / "provenance.json").write_text(json.dumps({"citable": False, "shas": ["0123456789abcdef"]}))
    assert "not citable" in table([d])


def test_paper_ablation_deltas_are_not_labelled_ilsvrc_2012_val() -> None:
    # §2: most of the paper's experiments used ILSVRC-2010; its ablation deltas do not name the set.
    from alexnet.experiments.ablation import PaperDiff

    assert "2012" not in PaperDiff("x", 0.014, 0.012).text() and "not stated" in PaperDiff("x", 0.014, 0.012).text()


def test_plan_lists_the_runs_without_training(tiny: Path, tmp_path: Path) -> None:
    from alexnet.data.format import PreparedDataset
    from alexnet.experiments.plan import make_plan

    n_train = len(PreparedDataset(tiny, "train"))
    plan = make_plan("lrn", str(tiny), scale="medium")
    # 2 arms × 3 rates on the first seed, then 2 more seeds × 2 arms; at most 3 added rates per arm.
    assert len(plan.runs) == 10 and plan.extension_bound == 6
    assert all(r["epochs"] == 4 and r["batch_size"] == 128 for r in plan.runs)
    assert plan.train_images == 10 * 4 * min(15000, n_train)
    assert {r["model_options"]["lrn"] for r in plan.runs} == {"paper", "none"}
    assert len(plan.networks()) == 2 and plan.protocol["scale"] == "medium"
    rvt = make_plan("relu-vs-tanh", str(tiny), scale="medium", threshold=0.125)
    assert len(rvt.runs) == 2 * 4 + 2 * 2 and rvt.protocol["threshold"] == 0.125
    ens = make_plan("ensemble", str(tiny), scale="medium")
    assert len(ens.runs) == 5 and ens.extension_bound == 0
    # Each planned run is evaluated on the whole val set at the end, and again on its two halves.
    n_val = len(PreparedDataset(tiny, "val"))
    assert all(r["eval_images"] == 2 * n_val for r in plan.runs)
    assert sum(1 for _ in tmp_path.iterdir()) == 0  # nothing written outside its temporary folder


def test_cli_plan_prints_runs_and_times_and_trains_nothing(tiny: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    rc = main(["experiment", "pooling", "--data", str(tiny), "--scale", "medium", "--plan", "--gpu-img-s", "10000"])
    out = capsys.readouterr().out
    assert rc == 0 and "10 runs" in out and "expected on this machine" in out and "img/s training" in out
    assert "expected on a GPU at 10,000 img/s" in out and "GPU-hours" in out
    assert main(["experiment", "lrn", "--data", str(tiny), "--plan", "--threshold", "0.2"]) == 2
    assert "--threshold applies to experiment 'relu-vs-tanh' only" in capsys.readouterr().err
    assert main(["experiment", "lrn", "--data", str(tiny), "--scale", "medium"]) == 2  # no --out
    assert main(["experiment", "lrn", "--quick", "--scale", "medium", "--out", str(tmp_path / "x")]) == 2


def test_seeds_to_resolve_the_papers_effect() -> None:
    from alexnet.experiments.stats import seeds_to_resolve, welch

    d = welch([0.20, 0.22, 0.24], [0.21, 0.23, 0.25])  # sd 2 points in each arm, 3 seeds
    assert d.within_noise and d.mde is not None
    n = seeds_to_resolve(d, 0.014)
    assert n == math.ceil(3 * (d.mde / 0.014) ** 2) and n > 3
    assert seeds_to_resolve(d, 1.0) == 3 and seeds_to_resolve(welch([0.1], [0.2]), 0.01) is None


def test_no_net_is_called_the_authors_where_its_configuration_is_not_theirs() -> None:
    # alexnet-cifar's defaults (He init, cross-map LRN, max-pools) and Figure 1's net (no rnorm layers,
    # biases at the weights' rate, batch 100) are not cuda-convnet's 18% net as the authors ran it.
    from alexnet.experiments import relu_vs_tanh

    assert "not its configuration" in models.info("alexnet-cifar").summary
    assert "as the authors ran it" not in relu_vs_tanh.__doc__.split("\n")[0]
    assert "*not* that net as the" in relu_vs_tanh.__doc__


def test_plan_warns_when_the_throughput_was_measured_on_a_busy_machine(tiny: Path, capsys,  # noqa: ANN001
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet.experiments.plan import busy_note

    # A quiet machine (load below one core's worth) gets no warning; a busy one is told its times are pessimistic.
    assert busy_note(None, 2) is None and busy_note(0.4, 2) is None
    note = busy_note(3.0, 2)
    assert note is not None and "load average 3.0 on 2 CPUs" in note and "pessimistic" in note
    monkeypatch.setattr("os.getloadavg", lambda: (5.0, 5.0, 5.0))
    assert main(["experiment", "pooling", "--data", str(tiny), "--scale", "medium", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "load average 5.0" in out and out.index("expected on this machine") < out.index("warning: the machine was busy")
    monkeypatch.setattr("os.getloadavg", lambda: (0.1, 0.1, 0.1))
    assert main(["experiment", "pooling", "--data", str(tiny), "--scale", "medium", "--plan"]) == 0
    assert "busy" not in capsys.readouterr().out
