"""The story of 2012 on the user's own data: the pre-2012 pipelines — the one the paper's Tables 1–2
compare against, dense SIFT + Fisher vectors + linear SVMs (Perronnin, Sánchez & Mensink 2010; Sánchez
& Perronnin 2011; :mod:`alexnet.experiments.classic_features`), and hand-crafted HOG features (Dalal &
Triggs 2005) with a linear SVM — against LeNet-5 (LeCun et al. 1998) and the AlexNet family, all on
the same training images and scored on the same validation images: top-1 and top-5 error and the
training time.

SIFT + FV + SVM: dense SIFT at four (small images) or five scales, PCA, a diagonal GMM, improved Fisher
vectors over a 1×1 + 3×1 spatial pyramid, one-vs-rest hinge-loss SVMs trained by SGD; its
regularisation λ swept like the CNNs' rates. HOG + SVM: scikit-image's ``hog`` on each stored image
(all three channels, the strongest gradient per pixel), standardised, then scikit-learn's ``LinearSVC`` (one-vs-rest); top-5 from the ranking of its
``decision_function``. The CNNs train through the engine with the ``cifar`` recipe (32×32 nets) or the
``paper`` recipe (the 2012 network, on 256×256 data). On 256×256 data the 32×32 nets train on a copy
of the data downscaled to 36×36 (written once into ``DIR/data-36``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from alexnet import models
from alexnet.data.format import PreparedDataset, is_prepared
from alexnet.data.writer import write_arrays
from alexnet.experiments import classic_features as cf
from alexnet.experiments.ablation import MEDIUM, QUICK, PaperDiff, compare_arms
from alexnet.experiments.runner import Runner, Sweep, Variant, mean_std, pm, selection_half
from alexnet.report.figures import plot_bars
from alexnet.report.tables import markdown_table

TITLE = "SIFT + Fisher vectors and HOG, with linear SVMs, vs LeNet-5 vs the AlexNet family"
CLAIM = ("Before 2012, the winners used hand-crafted features (SIFT, HOG) with SVMs: on ILSVRC-2012 the runner-up, "
         "SIFT + Fisher vectors, had 26.2% top-5 test error against 15.3% for AlexNet (7 CNNs) and 16.4% for 5 CNNs; "
         "on ILSVRC-2010, SIFT + FVs 45.7 / 25.7 top-1 / top-5 against 37.5 / 17.0 for one CNN (Tables 1 and 2).")
PAPER_ROWS = [
    {"method": "sparse coding (ILSVRC-2010 winner)", "data": "ILSVRC-2010 test", "top-1 err": "47.1%", "top-5 err": "28.2%"},
    {"method": "SIFT + Fisher vectors", "data": "ILSVRC-2010 test", "top-1 err": "45.7%", "top-5 err": "25.7%"},
    {"method": "1 CNN (AlexNet)", "data": "ILSVRC-2010 test", "top-1 err": "37.5%", "top-5 err": "17.0%"},
    {"method": "SIFT + FVs (ILSVRC-2012 runner-up)", "data": "ILSVRC-2012 test", "top-1 err": "—", "top-5 err": "26.2%"},
    {"method": "5 CNNs", "data": "ILSVRC-2012 test", "top-1 err": "—", "top-5 err": "16.4%"},
]
# HOG on at most this many training images in full mode (a linear SVM on 1.2M HOG vectors does not fit
# in memory); drawn at random with a fixed seed, so every class is represented.
HOG_MAX_TRAIN = 50_000
# SIFT + FV: its training descriptors (uint8, 128 per patch) in at most this many bytes (all of
# Fashion-MNIST's 60,000 at 32×32 fit; on 256×256 images, a few thousand).
FV_MAX_DESCRIPTOR_BYTES = 2 * 10**9
CLASSIC_ARMS = ("sift-fv-svm", "hog-svm")
# LinearSVC's regularisation, swept like the CNNs' learning rates.
HOG_C_QUICK = (0.001, 0.01, 0.1)
HOG_C_FULL = (0.0001, 0.001, 0.01, 0.1, 1.0)
METHODS = {"lenet5": "LeNet-5 (1998)", "alexnet-cifar": "AlexNet family, CIFAR net (2012)", "alexnet": "AlexNet (2012)"}
SMALL_SIZE = 36  # the 32×32 nets' data: stored 36×36 for 32×32 crops (§2's 256/224 margin)


def hog_features(images: np.ndarray) -> np.ndarray:
    """HOG descriptors of uint8 N×H×W×3 images: 9 orientations, 2×2-cell blocks with L2-Hys
    normalisation (Dalal & Triggs); cells of side / 4 pixels on small images (9 on 36×36: coarse
    cells tolerate the objects' shifts, which fine cells on 32-pixel images do not — 85% error
    against 70% on the built-in data) and side / 8 on large ones (32 on 256×256)."""
    from skimage.feature import hog

    h, w = images.shape[1:3]
    side = min(h, w)
    cell = max(4, side // 4 if side <= 64 else side // 8)
    return np.stack([hog(im, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2),
                         block_norm="L2-Hys", channel_axis=-1, feature_vector=True) for im in images]).astype(np.float32)


def read_images(root: Path, split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N×H×W×3 images and int labels of ``indices`` of a prepared split."""
    ds = PreparedDataset(root, split)
    chunks = [ds.read_batch(indices[i:i + 512]).permute(0, 2, 3, 1).numpy() for i in range(0, len(indices), 512)]  # N×H×W×3
    images = np.concatenate(chunks) if chunks else np.zeros((0, *ds.image_size, 3), np.uint8)
    return images, ds.labels[indices].astype(np.int64)


def svm_rows(ftr: np.ndarray, ytr: np.ndarray, fva: np.ndarray, yva: np.ndarray, num_classes: int, key: str,
             settings: Sequence[float], seeds: Sequence[int], fit: Callable[[float, int], Any],
             feature_time: float, train_images: int) -> list[dict[str, Any]]:
    """A linear SVM (``fit(setting, seed)``) for each setting (``key``: its name) and seed on
    features ``ftr``: one row each with top-1/top-5 error on ``fva`` and on its selection and report
    halves (:func:`alexnet.experiments.runner.selection_half`), and the timings (features + that fit)."""
    sel = selection_half(yva)
    k = min(5, num_classes)

    def errors(ranked: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        top1 = float(np.mean(ranked[:, 0] != y)) if len(y) else float("nan")
        top5 = float(np.mean(~(ranked[:, :k] == y[:, None]).any(1))) if num_classes > 5 and len(y) else 0.0
        return top1, top5

    rows = []
    for seed in seeds:
        for c in settings:
            t1 = time.time()
            svm = fit(c, seed)
            fit_time = time.time() - t1
            ranked = cf.ranked(svm, fva)  # classes, best first
            top1, top5 = errors(ranked, yva)
            s1, s5 = errors(ranked[sel], yva[sel])
            r1, r5 = errors(ranked[~sel], yva[~sel])
            rows.append({key: c, "seed": seed, "top1_err": top1, "top5_err": top5, "select_top1_err": s1,
                         "select_top5_err": s5, "report_top1_err": r1, "report_top5_err": r5,
                         "train_top1_err": float(np.mean(svm.predict(ftr) != ytr)), "time_s": feature_time + fit_time,
                         "feature_time_s": feature_time, "features": int(ftr.shape[1]), "train_images": train_images})
    return rows


def hog_svm_runs(root: Path, train_idx: np.ndarray, val_idx: np.ndarray, num_classes: int,
                 cs: Sequence[float] = (0.01,), seeds: Sequence[int] = (0,)) -> list[dict[str, Any]]:
    """HOG features once, then a LinearSVC for each regularisation ``C`` and seed on ``train_idx``
    (rows as :func:`svm_rows`)."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    t0 = time.time()
    xtr, ytr = read_images(root, "train", train_idx)
    ftr = hog_features(xtr)
    del xtr
    t_feat = time.time() - t0
    scaler = StandardScaler().fit(ftr)
    ftr = scaler.transform(ftr)
    xva, yva = read_images(root, "val", val_idx)
    fva = scaler.transform(hog_features(xva))
    del xva
    return svm_rows(ftr, ytr, fva, yva, num_classes, "C", cs, seeds,
                    lambda c, seed: LinearSVC(C=c, dual="auto", max_iter=2000, random_state=seed).fit(ftr, ytr),
                    t_feat, len(train_idx))


def fisher_svm_runs(root: Path, train_idx: np.ndarray, val_idx: np.ndarray, num_classes: int,
                    lambdas: Sequence[float] = (1e-4,), seeds: Sequence[int] = (0,)) -> list[dict[str, Any]]:
    """Dense SIFT + Fisher vectors (:mod:`alexnet.experiments.classic_features`; PCA and the GMM fitted
    once, on the training images' descriptors, with the first seed), then SGD linear SVMs for each
    regularisation λ and seed (rows as :func:`svm_rows`). The validation images are described and
    encoded a chunk at a time (large images have thousands of descriptors each)."""
    t0 = time.time()
    xtr, ytr = read_images(root, "train", train_idx)
    dtr, grid = cf.dense_sift(xtr)
    enc = cf.FisherEncoder(grid, xtr.shape[1]).fit(dtr, seed=seeds[0])
    del xtr
    ftr = enc.transform(dtr)
    del dtr
    t_feat = time.time() - t0
    parts, labels = [], []
    for i in range(0, len(val_idx), 1000):
        xva, yva = read_images(root, "val", val_idx[i:i + 1000])
        parts.append(enc.transform(cf.dense_sift(xva)[0]))
        labels.append(yva)
    fva = np.concatenate(parts) if parts else np.zeros((0, enc.dims), np.float32)
    yva = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return svm_rows(ftr, ytr, fva, yva, num_classes, "lambda", lambdas, seeds,
                    lambda lam, seed: cf.sgd_svm(ftr, ytr, lam, seed), t_feat, len(train_idx))


def hog_svm(root: Path, train_idx: np.ndarray, val_idx: np.ndarray, num_classes: int, seed: int = 0,
            c: float = 0.01) -> dict[str, Any]:
    """Train HOG + LinearSVC (regularisation ``c``) on ``train_idx``; top-1/top-5 error on ``val_idx``
    and the timings."""
    return hog_svm_runs(root, train_idx, val_idx, num_classes, (c,), (seed,))[0]


def downscaled(runner: Runner, size: int = SMALL_SIZE) -> Path:
    """The dataset at ``size``×``size`` (antialiased bilinear resize of the stored images), written
    once into ``DIR/data-<size>`` for the 32×32 networks."""
    import torch
    import torch.nn.functional as F

    out = runner.out / f"data-{size}"
    if is_prepared(out):
        return out
    splits = {}
    for split in ("train", "val"):
        ds = PreparedDataset(runner.data.root, split)
        parts = []
        for i in range(0, len(ds), 256):
            x = ds.read_batch(np.arange(i, min(len(ds), i + 256))).float()  # N×3×H×W
            y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            parts.append(y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())  # N×s×s×3
        splits[split] = (np.concatenate(parts), ds.labels.astype(np.int64))
    ds = PreparedDataset(runner.data.root, "train")
    return write_arrays(out, splits, classes=ds.classes, class_names=ds.class_names,
                        source={"type": "downscaled", "from": str(runner.data.root), "size": size})


@dataclass
class Result:
    """What the experiment measured: every method's rows (the SVMs' and the CNNs'), their sweeps and
    each method's comparison with the AlexNet-family reference."""

    base: dict[str, Any]  # the 32×32 CNNs' config
    small_data: str  # the data those CNNs trained on
    n_train: int  # training images every method sees
    sweeps: list[Sweep]  # the CNNs' (the 32×32 nets, then alexnet on large data)
    classic_sweeps: list[Sweep]  # SIFT + FV's (λ), HOG's (C)
    classic_best: dict[str, float]  # arm -> its chosen regularisation
    classic_rows: list[dict[str, Any]]
    rows: list[dict[str, Any]]  # every run: the classic pipelines', then the CNNs'
    every: Sweep  # every method at its chosen setting
    reference: str  # the arm every other one is compared with
    comparisons: dict[str, dict[str, Any]]  # arm -> compare_arms' comparison with the reference


def measure(runner: Runner) -> Result:
    """The CNNs' sweep, then SIFT + FV + SVM and HOG + SVM on the same training images, each
    regularisation swept and chosen like the CNNs' rates; each method against the reference net."""
    d = runner.data
    small_data = d.spec if not d.large else str(downscaled(runner))
    base_small = runner.base_config("alexnet-cifar", QUICK, MEDIUM, data=small_data)
    # The CNNs: one sweep, the same rates, epochs, schedule and seeds for each.
    small = runner.sweep(base_small, [Variant(name, {"model": name}, {"method": name}) for name in ("lenet5", "alexnet-cifar")])
    sweeps = [small]
    if d.large:
        sweeps.append(runner.sweep(runner.base_config("alexnet", QUICK, MEDIUM), [Variant("alexnet", {}, {"method": "alexnet"})]))
    cnn_rows = [r for sw in sweeps for r in sw.rows]

    # The classic pipelines on the training images the CNNs saw (their train_subset, else all, capped);
    # each one's regularisation (SIFT + FV: λ; HOG: C) swept and chosen like the CNNs' rates, on the
    # selection half, same seeds.
    n_train = int(base_small.get("train_subset") or 0) or d.train_images
    n_train = min(n_train, d.train_images)
    val_idx = np.arange(d.val_images)
    sweep_seeds = runner.sweep_seeds
    full = runner.scale == "full"
    # SIFT + FV: at most FV_MAX_DESCRIPTOR_BYTES of training descriptors in memory.
    m = len(cf.sift_grid(*d.image_size, *cf.sift_layout(*d.image_size)))
    fv_max = min(HOG_MAX_TRAIN, FV_MAX_DESCRIPTOR_BYTES // (128 * m))
    classic_rows: list[dict[str, Any]] = []
    classic_sweeps: list[Sweep] = []
    classic_best: dict[str, float] = {}
    for arm, method, key, runs, grid, cap in (
            ("sift-fv-svm", "SIFT + FV + SVM", "lambda", fisher_svm_runs,
             cf.SGD_ALPHAS_FULL if full else cf.SGD_ALPHAS_QUICK, fv_max),
            ("hog-svm", "HOG + linear SVM", "C", hog_svm_runs, HOG_C_FULL if full else HOG_C_QUICK, HOG_MAX_TRAIN)):
        rng = np.random.default_rng(0)
        train_idx = np.sort(rng.choice(d.train_images, cap, replace=False)) if n_train > cap else np.arange(n_train)
        runner.log(f"[{runner.name}] {method} on {len(train_idx)} training images, {key} in {list(grid)}")
        if runner.planning:  # nothing is trained: chance-level placeholders (the SVMs' minutes are not planned)
            arm_rows = [{key: c, "seed": s, "top1_err": 0.9, "top5_err": 0.5, "select_top1_err": 0.9, "select_top5_err": 0.5,
                         "report_top1_err": 0.9, "report_top5_err": 0.5, "train_top1_err": 0.9, "time_s": 0.0,
                         "feature_time_s": 0.0, "features": 0, "train_images": int(len(train_idx))}
                        for s in runner.seeds for c in grid]
        else:
            arm_rows = runs(d.root, train_idx, val_idx, d.num_classes, grid, runner.seeds)
        scores = {c: mean_std(r["select_top1_err"] for r in arm_rows if r[key] == c and r["seed"] in sweep_seeds)[0]
                  for c in grid}
        best = min(grid, key=lambda c: (scores[c], c))
        for r in arm_rows:
            r.update({"variant": f"{arm}-{key}{r[key]:g}", "arm": arm, "method": method, "params": None,
                      "run": None, "lr": None, "chosen": r[key] == best, f"chosen_{key}": best})
        classic_rows += arm_rows
        classic_best[arm] = best
        classic_sweeps.append(Sweep(arm_rows, [arm], tuple(grid), sweep_seeds, list(runner.seeds), {arm: best},
                                    {arm: scores}, "top-1 error on the selection half of the validation images"))

    for r in cnn_rows:
        net = models.create(r["model"], d.num_classes)
        r["params"] = sum(p.numel() for p in net.parameters())
        r["method"] = METHODS[r["model"]]
    rows: list[dict[str, Any]] = [*classic_rows, *cnn_rows]
    chosen = [r for r in rows if r["chosen"]]
    # Every method against the AlexNet-family net at its chosen rate (the paper: hand-crafted
    # features lose to the CNN).
    ref = "alexnet" if d.large else "alexnet-cifar"
    every = Sweep(chosen, [*CLASSIC_ARMS, *small.arms, *(["alexnet"] if d.large else [])], (), sweep_seeds,
                  list(runner.seeds), {}, {}, "")
    comparisons = compare_arms(every, ref, [PaperDiff(arm, None, None, "ILSVRC, SIFT + FVs vs CNNs", sign=1.0)
                                            for arm in CLASSIC_ARMS])
    by_cmp = {c["arm"]: c for c in comparisons}
    for arm in every.arms:
        c = by_cmp.get(arm)
        for r in rows:
            if c is not None and r["arm"] == arm:
                r["delta_top1_vs_reference"], r["verdict"] = c["report_top1_err"].diff, c["verdict"]
                r["reference"], r["paper"], r["delta_top1_mde"] = ref, c.get("paper"), c["report_top1_err"].mde
                r["delta_top1_ci95"] = [c["report_top1_err"].low, c["report_top1_err"].high] if c["report_top1_err"].tested else None
    return Result(base_small, small_data, n_train, sweeps, classic_sweeps, classic_best, classic_rows, rows, every, ref, by_cmp)


def report(runner: Runner, result: Result) -> Path:
    """The table, the bar charts of top-1 and top-5 error, results.json and report.md, from what
    :func:`measure` measured."""
    d = runner.data
    base_small, small_data, n_train, ref = result.base, result.small_data, result.n_train, result.reference
    sweeps, classic_sweeps, classic_best, classic_rows = result.sweeps, result.classic_sweeps, result.classic_best, result.classic_rows
    rows, every, by_cmp = result.rows, result.every, result.comparisons
    small = sweeps[0]
    chosen = [r for r in rows if r["chosen"]]
    chance1 = 1 - 1 / d.num_classes
    chance5 = max(0.0, 1 - 5 / d.num_classes)
    table = []
    for arm in every.arms:
        rs = [r for r in chosen if r["arm"] == arm]
        t1, s1, _ = mean_std(r["report_top1_err"] for r in rs)
        t5, s5, _ = mean_std(r["report_top5_err"] for r in rs)
        tt, _, _ = mean_std(r["time_s"] for r in rs)
        c = by_cmp.get(arm)
        table.append({"method": rs[0]["method"],
                      "chosen": (f"λ {classic_best[arm]:g}" if arm == "sift-fv-svm" else f"C {classic_best[arm]:g}"
                                 if arm == "hog-svm" else f"lr {rs[0]['lr']:g}"),
                      "top-1 err": pm(t1, s1), "top-5 err": pm(t5, s5),
                      f"Δ top-1 vs {ref} [95% CI]": "reference" if arm == ref else c["report_top1_err"].text(),  # type: ignore[index]
                      "verdict": "" if arm == ref else c["verdict"],  # type: ignore[index]
                      "train time (s)": f"{tt:.1f}" if tt is not None else "—", "parameters": rs[0].get("params"),
                      "train images": rs[0].get("train_images") or n_train, "seeds": len(rs),
                      "top1_err": t1, "top5_err": t5})
    bars = plot_bars(table, "method", "top1_err", runner.out / "top1.png", ylabel="validation top-1 error (%), report half",
                     title="Pre-2012 pipeline vs CNNs", reference={"chance": chance1})
    bars5 = plot_bars(table, "method", "top5_err", runner.out / "top5.png", ylabel="validation top-5 error (%), report half",
                      title="Pre-2012 pipeline vs CNNs (top-5)", reference={"chance": chance5})
    cols = ["method", "chosen", "top-1 err", "top-5 err", f"Δ top-1 vs {ref} [95% CI]", "verdict", "train time (s)",
            "parameters", "train images", "seeds"]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    sections = [
        f"## Result (ours, the report half of the {d.val_images} validation images; chance {100 * chance1:.1f}% top-1 / "
        f"{100 * chance5:.1f}% top-5)\n\nMean ± std over the seeds, each method at its chosen learning rate (CNNs) or "
        "regularisation (SVMs: λ for SIFT + FV, C for HOG); Δ with Welch's 95% interval and p-value, *not resolved at this scale* when it contains 0 (with the MDE).\n\n"
        + markdown_table(table, cols).rstrip(),
        "## The paper's numbers (ImageNet)\n\n" + markdown_table(PAPER_ROWS).rstrip(),
        "## Sweeps\n\n" + small.text() + " The SVMs: their regularisation likewise (SIFT + FV: λ, HOG: C), every "
        "value with every seed.\n\nSelection-half top-1 error (chosen in bold):\n\n"
        + "\n\n".join(sw.table(pct) for sw in sweeps) + "\n\n"
        + "\n\n".join(sw.table(pct).replace("lr ", f"{key} ").replace("chosen rate", f"chosen {key}")
                        for sw, key in zip(classic_sweeps, ("λ", "C"))),
    ]
    h = next(r for r in classic_rows if r["chosen"] and r["arm"] == "hog-svm")
    f = next(r for r in classic_rows if r["chosen"] and r["arm"] == "sift-fv-svm")
    patches, step = cf.sift_layout(*d.image_size)
    notes = [f"SIFT + FV (the paper's Tables 1–2 entry, Perronnin et al. 2010, Sánchez & Perronnin 2011): dense SIFT "
             f"(OpenCV) of {list(patches)}-pixel patches every {step} pixels, PCA to {cf.PCA_DIMS} dimensions, a "
             f"{cf.GAUSSIANS}-Gaussian diagonal GMM, Fisher vectors (means and variances), signed square root + L2 per "
             f"region, spatial pyramid 1×1 + 3×1: {f['features']} dimensions; one-vs-rest hinge SVMs by SGD, on "
             f"{f['train_images']} training images; features took {f['feature_time_s']:.1f} s; at the chosen λ its "
             f"training-set error is {100 * f['train_top1_err']:.1f}%. Scaled down from the papers' ~300-pixel images "
             "(constants in `alexnet.experiments.classic_features`); no colour descriptors, no product quantisation.",
             f"HOG: {h['features']} dimensions per image (9 orientations, 2×2-cell blocks, L2-Hys); "
             f"features took {h['feature_time_s']:.1f} s; LinearSVC on standardised features; at the chosen C its "
             f"training-set error is {100 * h['train_top1_err']:.1f}%.",
             "LeNet-5: LeCun's architecture (scaled tanh, average pooling) on RGB 32×32 crops, trained with the same "
             "recipe, schedule, sweep and seeds as the CIFAR net — a modern training of the 1998 model.",
             "SIFT + FV here is that entry's pipeline, not its number: the papers' descriptors were denser, richer "
             "(colour too) and their GMMs 8–32× larger, on 1.2M images."]
    if d.large:
        notes.append(f"The 32×32 networks trained on a {SMALL_SIZE}×{SMALL_SIZE} copy of the data ({small_data}).")
    if runner.scale != "full":
        notes.append(f"{runner.scale.capitalize()} scale: every method sees the same training subset; the CNNs train {base_small['epochs']} "
                     f"epochs; {len(runner.seeds)} seeds.")
    runner.write_results(rows)
    return runner.write_report(title=TITLE, claim=CLAIM, sections=sections, base=base_small, rows=rows,
                               figures=[bars, bars5], notes=notes,
                               row_columns=["variant", "seed", "lr", "lambda", "C", "chosen", "select_top1_err", "report_top1_err",
                                            "report_top5_err", "train_top1_err", "time_s", "params"])


def run(runner: Runner) -> Path:
    """:func:`measure`, then :func:`report`."""
    return report(runner, measure(runner))
