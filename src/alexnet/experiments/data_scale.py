"""The thesis as one experiment: hand-crafted features with linear SVMs against CNNs as the training
set grows. SIFT + Fisher vectors + SVM (:mod:`alexnet.experiments.classic_features`), HOG + SVM,
LeNet-5 and the AlexNet family's CIFAR net train on nested, class-balanced, seeded subsets of the
training split (about 500 → 60,000 images in factors of 4 on Fashion-MNIST) and are all scored on the
same full test split (the prepared dataset's ``val`` split).

Fairness, as in the other experiments: every method chooses its own hyper-parameter (the CNNs' learning
rate, HOG's C, the FV SVM's λ) at every size, from the same kind of grid, on the same held-out images
(a fixed, class-balanced part of the training split that no subset contains), on the first seed, by
the same rule (lowest held-out top-1 error, ties to the smaller value); the other seeds then train each
method at its choice. At the medium and full scales a CNN rate chosen at an edge of its grid extends the
grid on that side (the grid's ratio, at most the runner's ``max_extend`` rates), as ``Runner.sweep`` does;
the SVMs' grids span five decades. Seed s draws the subsets (nested: the size-n subset is the first n images of one
class-interleaved permutation, so each holds the same number of images per class) and seeds the
method's own randomness (initialisation, GMM, SGD), so the spread over seeds includes which images a
subset holds. Differences between methods are paired by seed (same images).

Compute: the CNNs see ``max(min_epochs · n, images_per_run)`` training images at size n (many
epochs of a small subset, at least ``min_epochs`` of a large one), a step schedule dropping the rate
×0.1 at three quarters of the epochs. Training time counts, for the CNNs, the run's wall time; for the
classic pipelines, their features of the subset (measured per image), PCA and GMM, the encoding and the
SVM at the chosen setting. Inference time is each method on the whole test split.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from alexnet import models
from alexnet.data.format import PreparedDataset, is_prepared
from alexnet.data.writer import write_arrays
from alexnet.errors import UserError
from alexnet.experiments import classic_features as cf
from alexnet.experiments.baselines import HOG_C_FULL, HOG_C_QUICK, hog_features, read_images
from alexnet.experiments.runner import Runner, Variant, mean_std, pm
from alexnet.experiments.stats import one_sample
from alexnet.files import atomic_write_text
from alexnet.report.figures import plot_scaling
from alexnet.report.tables import markdown_table

TITLE = "Error against training-set size: SIFT + Fisher vectors, HOG, LeNet-5 and the AlexNet family"
CLAIM = ("Before 2012 the winners used hand-crafted features (SIFT, HOG) with linear SVMs; at LeNet's scale a CNN's "
         "advantage was not obvious, and only with ImageNet's data (1.2 million images), a CNN's architecture and GPU "
         "compute together did the features hit their ceiling: on ILSVRC-2012 SIFT + Fisher vectors had 26.2% top-5 "
         "test error against 15.3% for AlexNet (Tables 1 and 2). \"Data, architecture, compute: none can be missing.\"")
DEFAULT_SEEDS = {"full": 3, "medium": 3, "quick": 2, "test": 2}
CNNS = ("lenet5", "alexnet-cifar")
CLASSIC = ("sift-fv-svm", "hog-svm")
METHODS = {"sift-fv-svm": "SIFT + FV + SVM", "hog-svm": "HOG + SVM", "lenet5": "LeNet-5", "alexnet-cifar": "AlexNet family (CIFAR net)"}
REFERENCE = "alexnet-cifar"  # "the CNN" of the crossing statements
HOLDOUT_SEED = 2012  # the held-out images are the same for every seed


@dataclass(frozen=True)
class Plan:
    first: int  # the smallest subset
    factor: int  # sizes first, first·factor, … and then the whole pool
    holdout_per_class: int
    images_per_run: int  # CNN: at least this many training images seen per run
    min_epochs: int  # … and at least this many epochs
    rate_factors: tuple[float, ...]  # × the recipe's learning rate
    alphas: tuple[float, ...]  # SIFT + FV: the SVM's λ
    cs: tuple[float, ...]  # HOG: LinearSVC's C
    batch_size: int = 0  # CNN: 0 keeps the recipe's (a batch must fit in the smallest subset)
    max_size: int = 0  # > 0: no subset larger (0: up to the whole pool)


# Full: ~500 → 60,000 on Fashion-MNIST (500, 2,000, 8,000, 32,000 and the 58,000 left beside the 2,000
# held out). The CNNs see ≥ 32,000 images per run (64 epochs of 500, 2 of 58,000: the hour's budget
# on two CPU cores, 3 seeds, is mostly theirs), rates ε/4, ε, 4ε (a factor 4 apart, to bracket both
# nets' best); the SVMs' λ over five decades centred on scikit-learn's default 1e-4, and C as in
# `baselines`.
FULL = Plan(500, 4, 200, 32_000, 2, (0.25, 1.0, 4.0), (1e-6, 1e-5, 1e-4, 1e-3, 1e-2), HOG_C_FULL)
# Quick: the built-in data (500 per class): 200, 800 and 3,200 images, a few minutes on two cores;
# batches of 64 (the ablations' quick scale), three steps an epoch on the smallest subset.
QUICK = Plan(200, 4, 20, 2_000, 2, (0.25, 1.0), cf.SGD_ALPHAS_QUICK, HOG_C_QUICK, batch_size=64, max_size=3_200)
# Test: the test suite's tiny data; the CNNs at the runner's test scale (a few steps).
TEST = Plan(20, 4, 2, 0, 0, (0.25, 1.0), cf.SGD_ALPHAS_QUICK[:2], HOG_C_QUICK[:2])


def plan_for(scale: str) -> Plan:
    """The plan of a scale. FULL is already sized for the hour on two CPU cores (the experiment trains
    the 32×32 networks only), so the medium scale is the same plan."""
    return {"full": FULL, "medium": FULL, "quick": QUICK, "test": TEST}[scale]


def subset_sizes(first: int, factor: int, pool: int, classes: int) -> list[int]:
    """``first``, ``first·factor``, … below ``pool``, then ``pool`` itself; each a multiple of the
    number of classes (so a class-interleaved prefix is exactly balanced)."""
    if pool < classes:
        raise UserError(f"data-scale: {pool} training images beside the held-out ones, fewer than the {classes} classes")
    top = pool - pool % classes
    sizes, n = [], max(first, classes)
    while n < top:
        sizes.append(n - n % classes)
        n *= factor
    sizes.append(top)
    return sorted(set(sizes))


def holdout_split(labels: np.ndarray, per_class: int, seed: int = HOLDOUT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the held-out images (``per_class`` of each class, at random) and of the rest (the
    pool the subsets are drawn from), both sorted."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= per_class:
            raise UserError(f"data-scale: class {c} has {len(idx)} training images; {per_class} are held out for selection")
        held.append(rng.choice(idx, per_class, replace=False))
    h = np.sort(np.concatenate(held))
    return h, np.setdiff1d(np.arange(len(labels)), h)


def interleaved_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of ``range(len(labels))``: each class shuffled (seeded), then taken round-robin
    class by class, so every prefix of k·C images holds k of each class (the classes' surplus, if their
    counts differ, comes last, shuffled)."""
    rng = np.random.default_rng(seed)
    per = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    m = min(len(p) for p in per)
    head = np.stack([p[:m] for p in per], 1).reshape(-1)
    tail = np.concatenate([p[m:] for p in per])
    return np.concatenate([head, rng.permutation(tail)]).astype(np.int64)


def cnn_epochs(n: int, plan: Plan) -> int:
    return max(plan.min_epochs, math.ceil(plan.images_per_run / n))


def errors(ranked: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 error of classes ranked best first (N×C)."""
    top1 = float(np.mean(ranked[:, 0] != y))
    top5 = float(np.mean(~(ranked[:, :5] == y[:, None]).any(1))) if ranked.shape[1] > 5 else 0.0
    return top1, top5


class Experiment:
    """The data, the subsets and every method's runs for one :class:`Runner`."""

    def __init__(self, runner: Runner) -> None:
        d = runner.data
        if d.large:
            raise UserError(f"data-scale trains the 32×32 networks; {d.spec} holds {d.image_size[0]}×{d.image_size[1]} "
                            "images: prepare the data at 32×32 (alexnet prepare --size 32)")
        self.runner = runner
        self.plan = plan_for(runner.scale)
        self.seeds = list(runner.seeds)
        self.select_seeds = self.seeds[:1]
        train = PreparedDataset(d.root, "train")
        self.classes, self.class_names = train.classes, train.class_names
        labels = train.labels.astype(np.int64)
        self.holdout, self.pool = holdout_split(labels, self.plan.holdout_per_class)
        self.pool_labels = labels[self.pool]
        self.orders = {s: interleaved_order(self.pool_labels, s) for s in self.seeds}  # positions into self.pool
        self.sizes = subset_sizes(self.plan.first, self.plan.factor, len(self.pool), d.num_classes)
        if self.plan.max_size:
            self.sizes = [n for n in self.sizes if n <= self.plan.max_size] or self.sizes[:1]
        self._images: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._features: dict[str, dict[str, np.ndarray]] = {}
        self.feature_s_per_image: dict[str, float] = {}
        self.grid: np.ndarray | None = None
        self.classic_dir = runner.out / "classic"
        # Planning (--plan): no features, no SVM fit, no dataset copy; the fits are counted instead.
        self.planned_fits: dict[str, int] = {m: 0 for m in CLASSIC}
        if not runner.planning:
            self.classic_dir.mkdir(parents=True, exist_ok=True)

    # -- images and features, computed once for every size and seed ----------------------------
    def images(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 N×H×W×3 images and labels of ``pool``, ``holdout`` or ``test`` (the val split)."""
        if part not in self._images:
            if part == "test":
                n = self.runner.data.val_images
                self._images[part] = read_images(self.runner.data.root, "val", np.arange(n))
            else:
                self._images[part] = read_images(self.runner.data.root, "train", self.pool if part == "pool" else self.holdout)
        return self._images[part]

    def features(self, method: str) -> dict[str, np.ndarray]:
        """``pool``/``holdout``/``test`` → dense SIFT descriptors (N×M×128) or HOG vectors, and the
        time per image they took."""
        if method not in self._features:
            out, t, count = {}, 0.0, 0
            for part in ("pool", "holdout", "test"):
                x, _ = self.images(part)
                t0 = time.perf_counter()
                if method == "sift-fv-svm":
                    out[part], self.grid = cf.dense_sift(x)
                else:
                    out[part] = hog_features(x)
                t += time.perf_counter() - t0
                count += len(x)
            self.feature_s_per_image[method] = t / max(1, count)
            self.runner.log(f"[{self.runner.name}] {METHODS[method]}: features of {count} images in {t:.0f} s")
            self._features[method] = out
        return self._features[method]

    def subset(self, n: int, seed: int) -> np.ndarray:
        """Positions into the pool of the size-``n`` subset of ``seed``."""
        return self.orders[seed][:n]

    # -- the classic pipelines ------------------------------------------------------------------
    def classic(self, method: str, n: int, seed: int, settings: Sequence[float]) -> list[dict[str, Any]]:
        """One row per setting (λ or C) of ``method`` at size ``n`` and ``seed``; cached in
        ``DIR/classic`` so a rerun reuses finished fits. Planning: counted, and chance-level
        placeholders (nothing is extracted or fitted, no cache is written)."""
        if self.runner.planning:
            self.planned_fits[method] += len(settings)
            c = self.runner.data.num_classes
            chance1, chance5 = 1 - 1 / c, max(0.0, 1 - 5 / c)
            return [{"setting": v, "holdout_top1_err": chance1, "top1_err": chance1, "top5_err": chance5,
                     "train_top1_err": chance1, "train_time_s": None, "inference_time_s": None, "features": None}
                    for v in settings]
        cache = self.classic_dir / f"{method}-n{n}-s{seed}.json"
        pipeline = self.pipeline(method)
        done: dict[float, dict[str, Any]] = {}
        if cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("pipeline") != pipeline:
                raise UserError(f"{cache}: holds fits of another pipeline or data ({saved.get('pipeline')}); use another "
                                "--out or remove that file")
            done = {r["setting"]: r for r in saved["rows"]}
        todo = [v for v in settings if v not in done]
        if todo:
            done.update({r["setting"]: r for r in self._fit_classic(method, n, seed, todo)})
            atomic_write_text(cache, json.dumps({"pipeline": pipeline, "rows": list(done.values())}, indent=1) + "\n")
        return [dict(done[v]) for v in settings]

    def pipeline(self, method: str) -> dict[str, Any]:
        """What a cached fit depends on besides its size, seed and setting."""
        d = {"data": str(self.runner.data.root), "holdout_per_class": self.plan.holdout_per_class,
             "holdout_seed": HOLDOUT_SEED}
        if method == "sift-fv-svm":
            d.update({"layout": list(map(list, [cf.sift_layout(*self.runner.data.image_size)[0]])),
                      "step": cf.sift_layout(*self.runner.data.image_size)[1], "pca_dims": cf.PCA_DIMS,
                      "gaussians": cf.GAUSSIANS, "fit_descriptors": cf.FIT_DESCRIPTORS, "power": cf.POWER,
                      "pyramid": list(cf.PYRAMID_STRIPS), "sgd_epochs": cf.SGD_MAX_EPOCHS})
        return d

    def _fit_classic(self, method: str, n: int, seed: int, settings: Sequence[float]) -> list[dict[str, Any]]:
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        f = self.features(method)
        pos = self.subset(n, seed)
        ytr = self.pool_labels[pos]
        yho, yte = self.images("holdout")[1], self.images("test")[1]
        per_image = self.feature_s_per_image[method]
        t0 = time.perf_counter()
        if method == "sift-fv-svm":
            assert self.grid is not None
            mine = f["pool"][pos]  # the subset's descriptors (a copy)
            enc = cf.FisherEncoder(self.grid, self.runner.data.image_size[0]).fit(mine, seed=seed)
            ftr = enc.transform(mine)
            del mine
            t_encode = time.perf_counter() - t0
            fho = enc.transform(f["holdout"])
            t1 = time.perf_counter()
            fte = enc.transform(f["test"])
            t_test_encode = time.perf_counter() - t1
            dims = enc.dims
        else:
            scaler = StandardScaler().fit(f["pool"][pos])
            ftr = scaler.transform(f["pool"][pos])
            t_encode = time.perf_counter() - t0
            fho = scaler.transform(f["holdout"])
            t1 = time.perf_counter()
            fte = scaler.transform(f["test"])
            t_test_encode = time.perf_counter() - t1
            dims = int(ftr.shape[1])
        rows = []
        for v in settings:
            t2 = time.perf_counter()
            if method == "sift-fv-svm":
                svm = cf.sgd_svm(ftr, ytr, v, seed, n_jobs=-1)
            else:
                svm = LinearSVC(C=v, dual="auto", max_iter=2000, random_state=seed).fit(ftr, ytr)
            t_fit = time.perf_counter() - t2
            h1, _ = errors(cf.ranked(svm, fho), yho)
            t3 = time.perf_counter()
            test_ranked = cf.ranked(svm, fte)
            t_decide = time.perf_counter() - t3
            e1, e5 = errors(test_ranked, yte)
            rows.append({"setting": v, "holdout_top1_err": h1, "top1_err": e1, "top5_err": e5,
                         "train_top1_err": errors(cf.ranked(svm, ftr), ytr)[0],
                         "train_time_s": per_image * n + t_encode + t_fit,
                         "inference_time_s": per_image * len(yte) + t_test_encode + t_decide,
                         "features": dims})
        return rows

    # -- the CNNs -------------------------------------------------------------------------------
    def cnn_data(self, seed: int) -> Path:
        """The seed's prepared dataset for the CNNs: ``train`` the pool in the seed's interleaved order
        (so ``train_subset: n`` is its size-n subset), ``val`` the held-out images; written once
        (planning: only named, not written)."""
        out = self.runner.out / f"data-s{seed}"
        if self.runner.planning:
            return out
        source = {"type": "data-scale subsets", "from": str(self.runner.data.root), "seed": seed,
                  "holdout_per_class": self.plan.holdout_per_class, "holdout_seed": HOLDOUT_SEED}
        if is_prepared(out):
            have = json.loads((out / "meta.json").read_text()).get("source")
            if have != source:
                raise UserError(f"{out}: holds another dataset ({have}); use another --out or remove that folder")
            return out
        x, y = self.images("pool")
        order = self.orders[seed]
        return write_arrays(out, {"train": (x[order], y[order]), "val": self.images("holdout")},
                            classes=self.classes, class_names=self.class_names, source=source)

    def cnn_base(self, n: int) -> dict[str, Any]:
        base = self.runner.base_config(REFERENCE, medium={})  # the plan sets the budget, not MEDIUM_SCALE
        if self.runner.scale != "test":
            e = cnn_epochs(n, self.plan)
            base.update({"epochs": e, "schedule": "step", "step_epochs": [max(1, math.floor(0.75 * e))], "eval_every": e})
            if self.plan.batch_size:
                base["batch_size"] = self.plan.batch_size
        return base

    def cnn(self, model: str, n: int, lr: float, seed: int) -> dict[str, Any]:
        r = self.runner
        v = Variant(f"{model}-n{n}-lr{lr:g}", {"model": model, "lr": lr, "train_subset": n, "data": str(self.cnn_data(seed))})
        row = r.train(self.cnn_base(n), v, seed)
        if r.planning:
            # The runner counted its validation passes on the original data's val split (the test
            # split here); this run validates on the held-out images.
            p = r.planned[-1]
            p["eval_images"] = p["eval_images"] // r.data.val_images * len(self.holdout)
        cache = r.out / row["run"] / "test_errors.json"
        if row["diverged"]:
            c = r.data.num_classes
            t = {"top1_err": 1 - 1 / c, "top5_err": max(0.0, 1 - 5 / c), "inference_time_s": None}
        elif cache.is_file():
            t = json.loads(cache.read_text())
        else:
            t0 = time.perf_counter()
            probs, labels = r.predict(row["run"], "val", root=r.data.root)
            dt = time.perf_counter() - t0
            y = labels.numpy()
            t = dict(zip(("top1_err", "top5_err"), errors(np.argsort(-probs.numpy(), axis=1), y)))
            t["inference_time_s"] = None if r.planning else dt
            if not r.planning:
                atomic_write_text(cache, json.dumps(t) + "\n")
        return {"setting": lr, "holdout_top1_err": row["top1_err"], "top1_err": t["top1_err"], "top5_err": t["top5_err"],
                "train_top1_err": row["train_top1_err"], "train_time_s": row["time_s"],
                "inference_time_s": t["inference_time_s"], "epochs": row["epochs"], "run": row["run"],
                "diverged": row["diverged"]}

    # -- every method at every size -------------------------------------------------------------
    def grid_for(self, method: str, base: dict[str, Any]) -> tuple[float, ...]:
        if method == "sift-fv-svm":
            return self.plan.alphas
        if method == "hog-svm":
            return self.plan.cs
        return tuple(round(float(base["lr"]) * f, 12) for f in self.plan.rate_factors)

    def method_at(self, method: str, n: int) -> list[dict[str, Any]]:
        """Every setting on the selection seed, the choice, then the other seeds at the choice."""
        base = self.cnn_base(n)
        grid = self.grid_for(method, base)

        def fit(seed: int, settings: Sequence[float]) -> list[dict[str, Any]]:
            if method in CLASSIC:
                rs = self.classic(method, n, seed, settings)
            else:
                rs = [self.cnn(method, n, v, seed) for v in settings]
            for r in rs:
                r.update({"method": METHODS[method], "arm": method, "size": n, "seed": seed,
                          "variant": f"{method}-n{n}-{self.setting_name(method)}{r['setting']:g}"})
            return rs

        first = len(self.runner.planned)
        rows = [r for s in self.select_seeds for r in fit(s, grid)]
        score = {v: mean_std(r["holdout_top1_err"] for r in rows if r["setting"] == v)[0] for v in grid}

        def best_of() -> float:
            return min(score, key=lambda v: (score[v] if score[v] is not None else math.inf, v))

        best = best_of()
        if method in CNNS and self.runner.max_extend and len(grid) > 1:
            # Bracketing, as Runner.sweep: a rate at an edge of what was tried adds the next rate beyond
            # it (the grid's ratio), at most max_extend on each side. (The SVMs' grids span five decades.)
            ratio, added = grid[1] / grid[0], {"low": 0, "high": 0}
            while (side := "low" if best == min(score) else "high" if best == max(score) else None) is not None:
                if added[side] >= self.runner.max_extend:
                    break
                if self.runner.planning:  # the bound, counted, not enumerated
                    self.runner.plan_extensions += len(self.select_seeds) * self.runner.max_extend
                    break
                v = float(f"{min(score) / ratio if side == 'low' else max(score) * ratio:.2g}")
                added[side] += 1
                self.runner.log(f"[{self.runner.name}] {METHODS[method]} at {n} images: best lr {best:g} at the grid's "
                                f"{side} edge; adding {v:g}")
                new = [r for s in self.select_seeds for r in fit(s, [v])]
                rows += new
                score[v] = mean_std(r["holdout_top1_err"] for r in new)[0]
                best = best_of()
            grid = tuple(sorted(score))
        rest = [s for s in self.seeds if s not in self.select_seeds]
        rows += [r for s in rest for r in fit(s, [best])]
        if self.runner.planning and method in CNNS:  # the plan's line for this method at this size
            name = self.setting_name(method)
            label = (f"{METHODS[method]} at {n:,} images: {name} {', '.join(f'{v:g}' for v in grid)} × seed "
                     f"{', '.join(map(str, self.select_seeds))}"
                     + (f", then the chosen {name} × seed{'s' if len(rest) > 1 else ''} {', '.join(map(str, rest))}"
                        if rest else ""))
            for p in self.runner.planned[first:]:
                p["group"] = label
        for r in rows:
            r["chosen"] = r["setting"] == best
            r["chosen_setting"] = best
            r["edge"] = best in (grid[0], grid[-1]) and len(grid) > 1
        self.runner.log(f"[{self.runner.name}] {METHODS[method]} at {n} images: {self.setting_name(method)}{best:g}, "
                        f"test top-1 error {pm(*mean_std(r['top1_err'] for r in rows if r['chosen'])[:2])}")
        return rows

    @staticmethod
    def setting_name(method: str) -> str:
        return {"sift-fv-svm": "lambda", "hog-svm": "C"}.get(method, "lr")


def crossing(sizes: Sequence[int], diffs: dict[int, Any]) -> dict[str, Any]:
    """Where the CNN overtakes a classic pipeline, from the paired differences (classic − CNN test
    error per seed, their mean and 95% interval at each size; > 0: the CNN is better): the smallest
    size from which the CNN is better at every larger size with intervals excluding zero, the size
    before it (the crossing lies between the two), and the mean differences' zero crossing
    interpolated on log size."""
    resolved = [n for n in sizes if diffs[n].tested and diffs[n].low > 0]
    behind = [n for n in sizes if diffs[n].tested and diffs[n].high < 0]
    tested = all(diffs[n].tested for n in sizes)
    first = None
    for i, n in enumerate(sizes):
        if all(m in resolved for m in sizes[i:]):
            first = n
            break
    interp = None
    means = [(n, diffs[n].diff) for n in sizes if diffs[n].diff is not None]
    for (a, da), (b, db) in zip(means, means[1:]):
        if da <= 0 < db:
            interp = math.exp(math.log(a) + (0 - da) / (db - da) * (math.log(b) - math.log(a)))
    if first is None:
        text = ("no spread (one seed): not resolved" if not tested else
                f"does not overtake within the sizes run (up to {sizes[-1]:,} images): the 95% interval at the largest "
                "size " + ("has the classic pipeline ahead" if sizes[-1] in behind else "contains zero"))
    elif first == sizes[0]:
        text = f"ahead already at the smallest size run ({first:,} images), at every size beyond zero's 95% interval"
    else:
        prev = sizes[sizes.index(first) - 1]
        text = (f"overtakes between {prev:,} and {first:,} images (ahead beyond the 95% interval from {first:,} on"
                + (f"; mean difference crosses zero at about {interp:,.0f}" if interp else "") + ")")
    return {"resolved_from": first, "behind_at": behind, "interpolated": interp, "text": text}


def run(runner: Runner) -> Path:
    exp = Experiment(runner)
    plan, sizes, d = exp.plan, exp.sizes, runner.data
    runner.log(f"[{runner.name}] sizes {sizes}, {len(exp.holdout)} held-out images, seeds {exp.seeds}")
    order = (*CLASSIC, *CNNS)
    rows: list[dict[str, Any]] = []
    for n in sizes:  # size-major: a stopped run has every method at the smaller sizes
        for method in order:
            rows += exp.method_at(method, n)
    params = {m: sum(p.numel() for p in models.create(m, d.num_classes).parameters()) for m in CNNS}
    for r in rows:
        r["params"] = params.get(r["arm"])
    if runner.planning:
        runner.plan_notes.append(planned_classic_text(exp))
    chosen = [r for r in rows if r["chosen"]]

    def at(method: str, n: int) -> list[dict[str, Any]]:
        return sorted((r for r in chosen if r["arm"] == method and r["size"] == n), key=lambda r: r["seed"])

    chance = 1 - 1 / d.num_classes
    # Error against size: one line per method with its spread.
    series = {METHODS[m]: [(n, 100 * mean_std(r["top1_err"] for r in at(m, n))[0],
                            None if (s := mean_std(r["top1_err"] for r in at(m, n))[1]) is None else 100 * s)
                           for n in sizes] for m in order}
    top = max((m + (sd or 0) for pts in series.values() for _, m, sd in pts if m is not None), default=0.0)
    # Chance only where it would not squash the lines (Fashion-MNIST's errors are a tenth of it).
    fig = plot_scaling(series, runner.out / "error_vs_size.png", xlabel="training images (log scale)",
                       ylabel="test top-1 error (%), mean ± std over seeds",
                       hline=100 * chance if 100 * chance <= 1.5 * top else None,
                       title=f"Error against training-set size ({len(exp.seeds)} seeds)")
    table = []
    for n in sizes:
        row: dict[str, Any] = {"train images": n}
        for m in order:
            rs = at(m, n)
            row[METHODS[m]] = pm(*mean_std(r["top1_err"] for r in rs)[:2])
        table.append(row)
    times = []
    for n in sizes:
        for m in order:
            rs = at(m, n)
            tt = mean_std(r["train_time_s"] for r in rs)[0]
            ti = mean_std(r["inference_time_s"] for r in rs)[0]
            times.append({"train images": n, "method": METHODS[m],
                          "chosen": f"{exp.setting_name(m)} {rs[0]['setting']:g}" + (" (grid edge)" if rs[0]["edge"] else ""),
                          "held-out err": pm(*mean_std(r["holdout_top1_err"] for r in rs)[:2]),
                          "test top-1 err": pm(*mean_std(r["top1_err"] for r in rs)[:2]),
                          "test top-5 err": pm(*mean_std(r["top5_err"] for r in rs)[:2]),
                          "train time (s)": "—" if tt is None else f"{tt:.1f}",
                          f"inference, {d.val_images} images (s)": "—" if ti is None else f"{ti:.2f}",
                          "epochs": rs[0].get("epochs", "—")})
    crossings, cross_rows = {}, []
    for cnn in CNNS:
        for cl in CLASSIC:
            diffs = {}
            for n in sizes:
                a, b = {r["seed"]: r["top1_err"] for r in at(cl, n)}, {r["seed"]: r["top1_err"] for r in at(cnn, n)}
                diffs[n] = one_sample([a[s] - b[s] for s in exp.seeds if s in a and s in b])
            c = crossing(sizes, diffs)
            crossings[f"{cnn} vs {cl}"] = {**c, "differences": {n: diffs[n].to_dict() for n in sizes}}
            cross_rows.append({"CNN": METHODS[cnn], "classic": METHODS[cl],
                               **{f"{n:,}": diffs[n].text() for n in sizes}, "the CNN …": c["text"]})
    sections = [
        f"## Result: test top-1 error against training-set size (the full test split, {d.val_images} images; chance "
        f"{100 * chance:.1f}%)\n\nMean ± std over {len(exp.seeds)} seeds, each method at the setting it chose on the "
        f"{len(exp.holdout)} held-out training images at that size.\n\n" + markdown_table(table).rstrip(),
        "## Where the CNN overtakes the classic pipelines\n\nClassic − CNN test top-1 error (points; > 0: the CNN is "
        "better), paired by seed (same subset), with the 95% t interval over seeds; the rule, fixed before the runs: the "
        "CNN overtakes at the smallest size from which every interval excludes zero in its favour.\n\n"
        + markdown_table(cross_rows).rstrip(),
        "## Compute: training and inference time\n\nMean over seeds at the chosen setting. Training: the CNN's run "
        "(every epoch, its held-out evaluation included); the classic pipelines' features of the subset (time per image "
        "× images), PCA + GMM and encoding (SIFT + FV) or standardisation (HOG), and the SVM at the chosen setting. "
        "Inference: the whole test split, features included.\n\n" + markdown_table(times).rstrip(),
        "## Selection\n\n" + selection_text(exp, rows, sizes, order),
    ]
    h = next((r for r in chosen if r["arm"] == "hog-svm"), {})
    s = next((r for r in chosen if r["arm"] == "sift-fv-svm"), {})
    notes = [
        f"SIFT + FV: dense SIFT (OpenCV) at patch sides {list(cf.sift_layout(*d.image_size)[0])} px every "
        f"{cf.sift_layout(*d.image_size)[1]} px, PCA to {cf.PCA_DIMS} dimensions, a {cf.GAUSSIANS}-Gaussian diagonal GMM "
        f"(both fitted on the subset's own descriptors), Fisher vectors (means and variances), signed square root + L2 "
        f"per region, spatial pyramid 1×1 + 3×1: {s.get('features')} dimensions; one-vs-rest hinge-loss SVMs by SGD "
        f"({cf.SGD_MAX_EPOCHS} epochs). Descriptors took {1e3 * exp.feature_s_per_image.get('sift-fv-svm', 0):.2f} ms "
        "per image on this machine.",
        f"HOG + SVM: scikit-image's HOG ({h.get('features')} dimensions), standardised, LinearSVC one-vs-rest.",
        "LeNet-5 and the CIFAR net: the cifar recipe's optimiser and augmentation, the same epochs, schedule, rates and "
        "seeds for both; they train on a copy of the data whose train split is the pool in the seed's order "
        f"(`DIR/data-s<seed>`) and validate on the held-out images; epochs at size n: max({plan.min_epochs}, "
        f"⌈{plan.images_per_run:,} / n⌉). Their input normalisation uses the pool's mean (unlabelled statistics of the "
        "training split), the same at every size.",
        "A setting marked *grid edge* is the smallest or largest of its grid: the best one may lie outside it.",
    ]
    if runner.scale not in ("medium", "full"):
        notes.append(f"{runner.scale} scale: its numbers are a smoke run, not evidence.")
    runner.write_results(rows)
    atomic_write_text(runner.out / "crossings.json", json.dumps(crossings, indent=1) + "\n")
    return runner.write_report(title=TITLE, claim=CLAIM, sections=sections, base=exp.cnn_base(sizes[-1]), rows=rows,
                               figures=[fig], notes=notes,
                               row_columns=["variant", "seed", "size", "setting", "chosen", "holdout_top1_err", "top1_err",
                                            "top5_err", "train_time_s", "inference_time_s"])


def planned_classic_text(exp: Experiment) -> str:
    """Planning: what the classic pipelines would do, and that their time is not in the estimate
    (their cost per image is measured only when they run)."""
    images = len(exp.pool) + len(exp.holdout) + exp.runner.data.val_images
    fits = "; ".join(f"{METHODS[m]} {exp.planned_fits[m]} SVM fits ({len(exp.grid_for(m, {}))} "
                     f"{exp.setting_name(m)} on seed {exp.select_seeds[0]}, then the chosen one on "
                     f"{len(exp.seeds) - len(exp.select_seeds)} more seed(s), at each of {len(exp.sizes)} sizes)"
                     for m in CLASSIC)
    return (f"not planned: the classic pipelines' time (features of {images:,} images once per method, then {fits}; "
            "SIFT + FV also fits a PCA + GMM per size and seed). No per-image cost of theirs is measured before "
            "they run, so the expected times below count the CNN runs only.")


def selection_text(exp: Experiment, rows: list[dict[str, Any]], sizes: Sequence[int], order: Sequence[str]) -> str:
    """Held-out top-1 error of every setting on the selection seed; the choice in bold."""
    parts = [f"Seed {exp.select_seeds[0]}, every setting; held-out top-1 error (the choice in bold)."]
    for m in order:
        out = []
        for n in sizes:
            rs = [r for r in rows if r["arm"] == m and r["size"] == n and r["seed"] in exp.select_seeds]
            row: dict[str, Any] = {"train images": n}
            for r in sorted(rs, key=lambda r: r["setting"]):
                text = f"{100 * r['holdout_top1_err']:.2f}%" if r["holdout_top1_err"] is not None else "—"
                row[f"{exp.setting_name(m)} {r['setting']:g}"] = f"**{text}**" if r["chosen"] else text
            out.append(row)
        settings = sorted({r["setting"] for r in rows if r["arm"] == m and r["seed"] in exp.select_seeds})
        columns = ["train images", *(f"{exp.setting_name(m)} {v:g}" for v in settings)]  # extended grids in order
        parts.append(f"{METHODS[m]}:\n\n" + markdown_table(out, columns=columns).rstrip())
    return "\n\n".join(parts)
