"""`alexnet experiment data-scale`: nested, class-balanced, seeded subsets beside a fixed held-out
set; every method choosing its own setting on the held-out images at every size, on the same seeds;
every method scored on the same full test split; the crossing rule; and the whole experiment at the
test scale writing its plot, results, crossings and report, and reusing finished work on a rerun."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alexnet.experiments import run_experiment
from alexnet.experiments.data_scale import CLASSIC, CNNS, crossing, holdout_split, interleaved_order, subset_sizes
from alexnet.experiments.stats import one_sample

pytest.importorskip("cv2")


def test_sizes_grow_by_the_factor_up_to_the_pool() -> None:
    assert subset_sizes(500, 4, 58_000, 10) == [500, 2000, 8000, 32000, 58000]
    assert subset_sizes(20, 4, 185, 10) == [20, 80, 180]  # multiples of the class count
    assert subset_sizes(5, 4, 30, 10) == [10, 30]


def test_subsets_are_nested_balanced_seeded_and_disjoint_from_the_held_out_set() -> None:
    labels = np.repeat(np.arange(5), 40)
    held, pool = holdout_split(labels, 4)
    assert len(held) == 20 and not set(held) & set(pool) and len(pool) == 180
    assert (np.bincount(labels[held]) == 4).all()
    assert (held == holdout_split(labels, 4)[0]).all()  # the same held-out images whatever the seed
    order = interleaved_order(labels[pool], seed=3)
    assert sorted(order) == list(range(len(pool)))
    for n in (5, 20, 100):
        assert (np.bincount(labels[pool][order[:n]], minlength=5) == n // 5).all()  # every prefix balanced
    assert (order == interleaved_order(labels[pool], seed=3)).all()
    assert not (order == interleaved_order(labels[pool], seed=4)).all()


def _diffs(means: dict[int, list[float]]) -> dict[int, object]:
    return {n: one_sample(v) for n, v in means.items()}


def test_crossing_rule() -> None:
    sizes = [10, 40, 160, 640]
    behind_then_ahead = _diffs({10: [-0.10, -0.12, -0.11], 40: [-0.02, 0.03, 0.0], 160: [0.05, 0.06, 0.055],
                                640: [0.10, 0.11, 0.12]})
    c = crossing(sizes, behind_then_ahead)
    assert c["resolved_from"] == 160 and c["behind_at"] == [10]
    assert "between 40 and 160" in c["text"] and 10 < c["interpolated"] < 160
    never = crossing(sizes, _diffs({n: [-0.1, -0.12, -0.11] for n in sizes}))
    assert never["resolved_from"] is None and "does not overtake" in never["text"]
    # Ahead at one size but not resolved at the largest: not a crossing.
    blip = crossing(sizes, _diffs({10: [-0.1, -0.1, -0.12], 40: [0.1, 0.11, 0.12], 160: [0.1, 0.11, 0.12],
                                   640: [-0.05, 0.05, 0.0]}))
    assert blip["resolved_from"] is None
    assert "one seed" in crossing(sizes, _diffs({n: [0.1] for n in sizes}))["text"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from alexnet.data.sources import synthetic

    return synthetic.build(tmp_path_factory.mktemp("data") / "tiny", size=36, train_per_class=20, val_per_class=5)


def test_data_scale_runs_every_method_at_every_size(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    logs: list[str] = []
    report = run_experiment("data-scale", str(tiny), out, scale="test", device="cpu", workers=0, seeds=2, log=logs.append)
    text = report.read_text()
    assert "## Where the CNN overtakes" in text and "## Compute" in text and "## Machine" in text
    assert (out / "error_vs_size.png").stat().st_size > 0
    rows = json.loads((out / "results.json").read_text())
    sizes = [20, 80, 180]  # 200 training images less 20 held out, the first 20 growing ×4
    methods = (*CLASSIC, *CNNS)
    chosen = [r for r in rows if r["chosen"]]
    # Every method at every size on the same seeds; every one scored on the whole test split.
    assert {(r["arm"], r["size"], r["seed"]) for r in chosen} == {(m, n, s) for m in methods for n in sizes for s in (0, 1)}
    for r in rows:
        assert 0 <= r["top1_err"] <= 1 and r["top5_err"] <= r["top1_err"]
        assert r["train_time_s"] is not None and r["train_time_s"] >= 0
    # Each method tries its whole grid on seed 0 only, at every size; the choice is its best held-out error.
    for m in methods:
        for n in sizes:
            mine = [r for r in rows if r["arm"] == m and r["size"] == n]
            grid = [r["setting"] for r in mine if r["seed"] == 0]
            assert len(grid) == 2 and [r["setting"] for r in mine if r["seed"] == 1] == [mine[0]["chosen_setting"]]
            best = min(r["holdout_top1_err"] for r in mine if r["seed"] == 0)
            assert next(r for r in mine if r["seed"] == 0 and r["chosen"])["holdout_top1_err"] == best
    # The CNNs train on the seed's ordered copy, its first n images, and validate on the held-out ones.
    import yaml

    run = next(r["run"] for r in chosen if r["arm"] == "lenet5" and r["size"] == 80 and r["seed"] == 1)
    cfg = yaml.safe_load((out / run / "config.yaml").read_text())
    assert cfg["train_subset"] == 80 and cfg["data"] == str(out / "data-s1")
    meta = json.loads((out / "data-s1" / "meta.json").read_text())
    assert meta["splits"]["train"]["count"] == 180 and meta["splits"]["val"]["count"] == 20
    crossings = json.loads((out / "crossings.json").read_text())
    assert set(crossings) == {f"{c} vs {k}" for c in CNNS for k in CLASSIC}
    # A rerun trains nothing and fits nothing again.
    logs.clear()
    run_experiment("data-scale", str(tiny), out, scale="test", device="cpu", workers=0, seeds=2, log=logs.append)
    assert not any(": training (" in s for s in logs) and not any("features of" in s for s in logs)
    assert json.loads((out / "results.json").read_text()) == rows
    # A cached fit of another pipeline is refused, not reused under this one's name.
    cache = out / "classic" / "sift-fv-svm-n20-s0.json"
    saved = json.loads(cache.read_text())
    saved["pipeline"]["gaussians"] = 7
    cache.write_text(json.dumps(saved))
    from alexnet.errors import UserError

    with pytest.raises(UserError, match="another pipeline"):
        run_experiment("data-scale", str(tiny), out, scale="test", device="cpu", workers=0, seeds=2, log=logs.append)


def test_scaling_plot(tmp_path: Path) -> None:
    from alexnet.errors import UserError
    from alexnet.report.figures import plot_scaling

    p = plot_scaling({"a": [(500, 20.0, 1.0), (2000, 15.0, None)], "b": [(500, 25.0, 3.0), (2000, 14.0, 1.0)]},
                     tmp_path / "s.png", "training images", "error (%)", hline=90.0)
    assert p.stat().st_size > 0
    with pytest.raises(UserError, match="nothing to plot"):
        plot_scaling({}, tmp_path / "t.png", "x", "y")


def test_plan_trains_and_fits_nothing_and_lists_the_cnn_runs(tiny: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet.experiments import data_scale, runner as runner_mod
    from alexnet.experiments.plan import describe, make_plan
    from alexnet.experiments.runner import Runner

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("planning extracted features, trained, or wrote a dataset copy")

    monkeypatch.setattr(data_scale.cf, "dense_sift", refuse)
    monkeypatch.setattr(data_scale, "hog_features", refuse)
    monkeypatch.setattr(data_scale, "write_arrays", refuse)
    monkeypatch.setattr(runner_mod, "train_run", refuse)
    out = tmp_path / "ds"
    runner = Runner("data-scale", str(tiny), out, seeds=2, scale="test", device="cpu", log=lambda s: None,
                    planning=True)
    data_scale.run(runner)

    # Nothing trained or fitted: no run folder, no dataset copy, no cached SVM fit.
    assert not (out / "runs").exists() and not list(out.glob("data-s*")) and not (out / "classic").exists()
    # Each CNN at each size: both rates on seed 0, then the chosen rate on seed 1.
    sizes = [20, 80, 180]
    planned = runner.planned
    assert len(planned) == len(CNNS) * len(sizes) * 3
    assert sorted(p["model"] for p in planned) == sorted([m for m in CNNS for _ in range(3 * len(sizes))])
    groups: dict[str, list[dict]] = {}
    for p in planned:
        groups.setdefault(p["group"], []).append(p)
    assert len(groups) == len(CNNS) * len(sizes) and all(len(g) == 3 for g in groups.values())
    for m in CNNS:
        for n in sizes:
            # The cifar recipe's rate 0.02 × (1/4, 1), the test scale's grid.
            assert f"{data_scale.METHODS[m]} at {n} images: lr 0.005, 0.02 × seed 0, then the chosen lr × seed 1" \
                in groups
    # The test scale's 2 epochs of at most 2 batches of 16 from the size-n subset; validated on the
    # 20 held-out images after each epoch, then scored once on the 50 test images.
    for p in planned:
        n = int(p["run"].split("-n")[1].split("-")[0])
        assert p["epochs"] == 2 and p["train_images"] == 2 * min(n, 32) and p["eval_images"] == 2 * 20 + 50
    # The classic pipelines' work is named in the plan, and their time said to be left out.
    assert len(runner.plan_notes) == 1 and "not planned" in runner.plan_notes[0]
    assert "SIFT + FV + SVM 9 SVM fits" in runner.plan_notes[0] and "HOG + SVM 9 SVM fits" in runner.plan_notes[0]

    plan = make_plan("data-scale", str(tiny), scale="test", seeds=2)
    cpu = {json.dumps([m, o, b], sort_keys=True): (1000.0, 2000.0) for m, o, b in plan.networks()}
    text = describe(plan, cpu, None, "", "test")
    assert f"{len(planned)} runs" in text and "LeNet-5 at 80 images: lr" in text and "3 runs" in text
    assert "expected here" in text and "count the CNN runs only" in text


def test_medium_scale_is_the_hour_plan_without_the_generic_medium_fields(tmp_path: Path) -> None:
    """data-scale's full plan is already sized for two CPU cores, so ``--scale medium`` (what
    benchmarks/experiments_quick.py passes) runs it, with the plan's epochs and schedule rather than
    the runner's generic 5 epochs of 10,000 images."""
    from alexnet.experiments import data_scale
    from alexnet.experiments.runner import Runner

    assert data_scale.plan_for("medium") == data_scale.plan_for("full") == data_scale.FULL
    assert data_scale.DEFAULT_SEEDS["medium"] == data_scale.DEFAULT_SEEDS["full"]
    runner = Runner("data-scale", "synthetic", tmp_path / "ds", seeds=3, scale="medium", device="cpu", log=lambda s: None,
                    planning=True)
    exp = data_scale.Experiment(runner)
    base = exp.cnn_base(500)
    assert base["epochs"] == data_scale.cnn_epochs(500, data_scale.FULL) == 64
    assert base["step_epochs"] == [48] and base["eval_every"] == 64 and base["schedule"] == "step"


def test_a_cnn_rate_at_the_grid_edge_extends_the_grid_on_that_side(tmp_path: Path) -> None:
    """At the medium scale a CNN whose best rate is an edge of its grid gets the next rate beyond it
    (the grid's ratio), until its best is inside what it tried or max_extend rates were added."""
    from alexnet.experiments import data_scale
    from alexnet.experiments.runner import Runner

    runner = Runner("data-scale", "synthetic", tmp_path / "ds", seeds=3, scale="medium", device="cpu",
                    log=lambda s: None)
    exp = data_scale.Experiment(runner)
    trained: list[tuple[float, int]] = []

    def fake_cnn(model: str, n: int, lr: float, seed: int) -> dict:
        trained.append((lr, seed))
        err = abs(np.log(lr / 0.64)) / 10  # best near 0.64: above the grid 0.005, 0.02, 0.08
        return {"setting": lr, "holdout_top1_err": err, "top1_err": err, "top5_err": 0.0}

    exp.cnn = fake_cnn  # type: ignore[method-assign]
    rows = exp.method_at("lenet5", 500)
    sel = [lr for lr, s in trained if s == exp.select_seeds[0]]
    # 0.08 wins at the top: 0.32 is added; 0.32 wins at the new top: 1.3 (1.28 to two digits) is
    # added; 0.32 still wins, now inside what was tried.
    assert sel == [0.005, 0.02, 0.08, 0.32, 1.3]
    assert {r["setting"] for r in rows if r["chosen"]} == {0.32}
    assert not any(r["edge"] for r in rows)  # bracketed
    assert sorted(s for lr, s in trained if s != exp.select_seeds[0]) == exp.seeds[1:]  # the others at the choice

    trained.clear()
    exp.cnn = lambda model, n, lr, seed: (trained.append((lr, seed)) or  # type: ignore[method-assign]
                                          {"setting": lr, "holdout_top1_err": 1 / lr, "top1_err": 0.1, "top5_err": 0.0})
    rows = exp.method_at("lenet5", 500)
    sel = [lr for lr, s in trained if s == exp.select_seeds[0]]
    assert len(sel) == 3 + runner.max_extend and all(r["edge"] for r in rows)  # bounded, and marked not bracketed


def test_the_results_copy_keeps_every_file_the_experiment_wrote_beside_its_report(tmp_path: Path) -> None:
    """benchmarks/experiments_quick.py commits an experiment's top-level files: data-scale's
    crossings.json (which the experiments page cites) was left out of a fixed list."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("experiments_quick", Path(__file__).parents[1] / "benchmarks" / "experiments_quick.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "data-scale"
    (out / "runs" / "r1").mkdir(parents=True)
    for name in ("report.md", "results.json", "protocol.json", "provenance.json", "crossings.json", "error_vs_size.png",
                 ".lock", "runs/r1/metrics.json"):
        (out / name).write_text("x")
    assert [f.name for f in mod.kept(out)] == ["crossings.json", "error_vs_size.png", "protocol.json", "provenance.json",
                                              "report.md", "results.json"]
