"""The shared machinery of every experiment: variants × seeds trained through the engine, one run
folder each (``DIR/runs/<variant>-s<seed>/``), finished runs skipped and interrupted ones resumed,
mean ± std over seeds, and the report skeleton (our numbers beside the paper's, the config, the scale
and the machine).

An experiment module builds :class:`Variant` objects (its arms), trains them with
:meth:`Runner.sweep` (or :meth:`Runner.train_all`), and hands the rows and its own sections to
:meth:`Runner.write_report` / :meth:`Runner.write_results`.

Fair comparisons. :meth:`Runner.sweep` gives every arm the same treatment: the same learning-rate
sweep (:meth:`Runner.rates`), the same epochs and schedule (one base config), the same seeds. Each
arm is trained at every rate of the sweep on the sweep seeds (the first seed at the quick and test
scales, every seed at full scale), its rate is chosen by a criterion that is the same for all arms,
and the remaining seeds train each arm at its chosen rate. No arm is ever retrained on its own. The
ablations choose by the top-1 error on the *selection half* of the validation images and report
the other half (:func:`val_halves`), so the reported error is not the one the rate was picked on.

Scales. ``full``: the recipe's epochs on all the data (``cifar`` for 32×32 data, ``paper`` for the
256×256 network). ``medium``: each experiment's own medium scale (``MEDIUM`` in its module), sized
with ``alexnet experiment NAME --plan`` so that one experiment finishes in about 30 minutes on two
CPU cores on Fashion-MNIST; the scale at which claims are resolved on this data. ``quick``: each
experiment's own small scale, a smoke test that the experiment runs end to end (under five minutes on
two CPU cores on the built-in data): no directional claim is drawn from it. ``test``: a few optimizer
steps, for the test suite; it is chosen with the ``scale`` argument or the environment variable
``ALEXNET_EXPERIMENT_SCALE=test`` (not a CLI flag: its numbers mean nothing).

Independence. At the medium and full scales each experiment draws its seeds from its own range
(:func:`seed_base`), so no two experiments share a run: the reference arm of ``lrn`` and that of
``pooling`` are independent trainings, and so are the ensemble's members.

Bracketing. At the medium and full scales an arm whose chosen rate is at an edge of the sweep is
trained at the next rate beyond that edge (the grid's own ratio), until its chosen rate is inside the
rates tried or :data:`MAX_EXTEND` rates were added on that side; every added rate is recorded
(``sweep_extended``, ``bracketed`` in results.json).

Protocol. Before its first run an experiment writes ``protocol.json``: the scale, seeds, sweep rule,
decision rule (:data:`alexnet.experiments.stats.DECISION_RULE`) and any threshold. A later invocation
with another protocol in the same folder is refused, so the rule cannot change after the results.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import yaml

from alexnet import config as config_mod
from alexnet.config import RUNTIME_FIELDS, TrainConfig
from alexnet.data.format import PreparedDataset
from alexnet.data.resolve import open_splits, resolve_data
from alexnet.engine.device import is_cuda, pick_device
from alexnet.engine.evaluate import Precision, predict_probs, selection_half, topk_correct
from alexnet.engine.inference import augment_for, load
from alexnet.engine import run_folder
from alexnet.engine.train import TrainingDiverged
from alexnet.engine.train import run as train_run
from alexnet.environment import environment
from alexnet.errors import UserError
from alexnet.experiments.stats import DECISION_RULE
from alexnet.files import atomic_write_text
from alexnet.report.tables import markdown_table, mean_std, pm  # noqa: F401  (mean_std, pm: used here and by the experiments)

SCALE_ENV = "ALEXNET_EXPERIMENT_SCALE"
SCALES = ("test", "quick", "medium", "full")
RUNS = "runs"
PROTOCOL = "protocol.json"

# The test scale: a couple of optimizer steps per epoch, two epochs (so curves have two points).
TEST_SCALE: dict[str, Any] = {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 2, "train_subset": 0}
# The medium scale of an experiment that does not define its own: 10,000 training images for 5
# epochs at batch 128, the last at a tenth of the rate (the same step schedule for every arm).
MEDIUM_SCALE: dict[str, Any] = {"epochs": 5, "batch_size": 128, "train_subset": 10000, "eval_every": 5,
                                "schedule": "step", "step_epochs": [4], "max_steps_per_epoch": 0}
MAX_EXTEND = 3  # rates a sweep may add beyond each edge of its grid (medium and full scales)
# Seconds one experiment should take on 2 CPU cores at the medium scale (what --plan checks).
MEDIUM_BUDGET_S = 1800


def seed_base(name: str, scale: str) -> int:
    """The first seed of experiment ``name``: 0 at the test and quick scales; at the medium and full
    scales a number of its own (1000–9999, from its name), so that no two experiments share a run."""
    if scale in ("test", "quick"):
        return 0
    return 1000 + zlib.crc32(name.encode()) % 9000


@dataclass
class Variant:
    """One arm of an experiment: a name (the run folder's prefix and the ``variant`` column), the
    config fields it changes (``model_options`` is merged into the base's), and extra columns for
    its result rows (e.g. ``activation``, ``lr``)."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataInfo:
    spec: str  # what the user gave: "synthetic" or a prepared dataset's folder
    root: Path  # the prepared dataset folder
    image_size: tuple[int, int]
    num_classes: int
    train_images: int
    val_images: int

    @property
    def large(self) -> bool:
        """Images big enough for the paper's 224×224 network (stored 256×256, §2)."""
        return min(self.image_size) >= 224


def resolve_scale(quick: bool, scale: str | None = None) -> str:
    """``scale`` (or $ALEXNET_EXPERIMENT_SCALE) wins; otherwise quick or full."""
    s = scale or os.environ.get(SCALE_ENV) or ("quick" if quick else "full")
    if s not in SCALES:
        raise UserError(f"experiment scale {s!r} is not valid; accepted: {', '.join(SCALES)}")
    return s


def open_data(spec: str) -> DataInfo:
    """``synthetic`` is the built-in set at the CIFAR net's 32×32 input (stored 36×36); a path is a
    prepared dataset, whose image size picks the model family (:meth:`Runner.main_model`)."""
    if spec == "synthetic":
        root = resolve_data(spec, 32)
    else:
        root = resolve_data(spec, 0)
    train, val = open_splits(root)
    return DataInfo(spec, root, tuple(train.image_size), train.num_classes, len(train), len(val))  # type: ignore[arg-type]


def aggregate(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], by: str = "variant") -> list[dict[str, Any]]:
    """One row per ``by`` value (in order of first appearance): ``<key>_mean``, ``<key>_std`` for
    each key, and ``n`` (the number of runs)."""
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r[by], []).append(r)
    out = []
    for name, rs in groups.items():
        agg: dict[str, Any] = {by: name, "n": len(rs)}
        for k in keys:
            m, s, _ = mean_std(r.get(k) for r in rs)
            agg[f"{k}_mean"], agg[f"{k}_std"] = m, s
        out.append(agg)
    return out


def _comparable(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}


@dataclass
class Sweep:
    """What :meth:`Runner.sweep` trained: every run's row (``arm``, ``lr``, ``chosen``), the rates,
    the seeds the rates were chosen on, each arm's chosen rate and its mean criterion at each rate."""

    rows: list[dict[str, Any]]
    arms: list[str]
    rates: tuple[float, ...]
    sweep_seeds: list[int]
    seeds: list[int]
    best: dict[str, float]
    scores: dict[str, dict[float, float]]  # arm -> rate -> mean criterion over the sweep seeds
    criterion: str
    extended: dict[str, list[float]] = field(default_factory=dict)  # arm -> rates added beyond the grid
    bracketed: dict[str, bool] = field(default_factory=dict)  # arm -> its chosen rate has a tried rate on each side

    def chosen(self, arm: str | None = None) -> list[dict[str, Any]]:
        """The runs at each arm's chosen rate (every seed), of ``arm`` or of all arms."""
        return [r for r in self.rows if r["chosen"] and (arm is None or r["arm"] == arm)]

    def values(self, arm: str, key: str) -> list[float | None]:
        return [r.get(key) for r in self.chosen(arm)]

    def table(self, fmt: Callable[[float], str]) -> str:
        """Markdown: one line per arm, the criterion at each rate; the chosen rate in bold."""
        rows = []
        for a in self.arms:
            row: dict[str, Any] = {"arm": a}
            for lr in self.rates:
                v = self.scores[a].get(lr)
                text = "—" if v is None else ("not reached" if math.isinf(v) else fmt(v))
                row[f"lr {lr:g}"] = f"**{text}**" if lr == self.best[a] else text
            row["chosen rate"] = self.best[a]
            rows.append(row)
        return markdown_table(rows).rstrip()

    def text(self) -> str:
        """One paragraph: which rates, which seeds, which criterion."""
        rest = [s for s in self.seeds if s not in self.sweep_seeds]
        ext = "".join(f" The sweep of `{a}` was extended to {', '.join(f'{x:g}' for x in xs)} (its best rate was at an edge)."
                      for a, xs in self.extended.items() if xs)
        unb = [a for a, ok in self.bracketed.items() if not ok]
        if unb:
            ext += (" **Not bracketed** (the chosen rate is still at the edge of the rates tried): "
                    + ", ".join(f"`{a}`" for a in unb) + ".")
        return (f"Every arm was trained at each learning rate of the sweep ({', '.join(f'{x:g}' for x in self.rates)}) "
                f"with seed{'s' if len(self.sweep_seeds) > 1 else ''} {', '.join(map(str, self.sweep_seeds))}; "
                f"its rate is the one with the best {self.criterion} (mean over those seeds, the same rule for every arm)"
                + (f", and seed{'s' if len(rest) > 1 else ''} {', '.join(map(str, rest))} then trained every arm at "
                   "its chosen rate" if rest else "")
                + ". No arm was trained outside this plan." + ext)


class Runner:
    """Trains an experiment's variants into ``out/runs`` and writes its results and report.

    ``quick`` picks the experiment's quick scale; ``scale`` ("test", "quick", "full") overrides it.
    ``seeds`` is the number of seeds per variant (seeds 0 … K−1)."""

    def __init__(self, name: str, data: str, out: str | Path, *, quick: bool = False, seeds: int = 1,
                 scale: str | None = None, device: str = "auto", workers: int | None = None,
                 log: Callable[[str], None] = print, progress: bool = False, factors: bool = False,
                 threshold: float | None = None, planning: bool = False) -> None:
        if seeds < 1:
            raise UserError(f"--seeds {seeds}: must be at least 1")
        self.name = name
        self.out = Path(out)
        self.scale = resolve_scale(quick, scale)
        base = seed_base(name, self.scale)
        self.seeds = list(range(base, base + seeds))
        self.device = device
        self.workers = workers
        self.log = log
        self.progress = progress
        self.factors = factors  # relu-vs-tanh: the one-factor-at-a-time study at any scale
        self.threshold = threshold  # relu-vs-tanh: the training error to reach (None: the paper's)
        self.max_extend = MAX_EXTEND if self.scale in ("medium", "full") else 0
        # Planning (``--plan``): nothing is trained; ``train`` records each run (``planned``) and
        # returns a placeholder row, so that an experiment's own code enumerates its runs; an entry
        # of ``planned`` may carry a ``group`` (a label the plan totals its runs under).
        self.planning = planning
        self.planned: list[dict[str, Any]] = []
        self.plan_extensions = 0  # runs the sweeps may add when they extend (the bound)
        self.plan_notes: list[str] = []  # what the plan leaves out (an experiment's work that is not a run)
        self.data = open_data(data)
        self.t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        self.trained_now = 0  # runs trained (not skipped) by this invocation
        self.protocol: dict[str, Any] = {}
        self.write_protocol()

    # -- the protocol, fixed before the runs ------------------------------------------------------
    def write_protocol(self, **extra: Any) -> None:
        """``protocol.json``: what decides the experiment's verdicts, written before its first run.
        A folder holding another protocol is refused (the rule cannot change after the results)."""
        proto = {"experiment": self.name, "scale": self.scale, "seeds": self.seeds, "data": self.data.spec,
                 "decision_rule": DECISION_RULE,
                 "sweep": ("each arm at every rate of the grid on the sweep seeds, the rate with the best mean criterion "
                           "chosen by the same rule for every arm, then the other seeds at that rate"
                           + (f"; a rate at the grid's edge extends the grid on that side, at most {self.max_extend} rates"
                              if self.max_extend else "; no extension (this scale does not bracket)")),
                 "selection": "rates chosen on the selection half of the validation images (every other image of each "
                              "class), errors reported on the other half; the plateau schedule reads the selection half",
                 **({"threshold": self.threshold} if self.threshold is not None else {}), **extra}
        p = self.out / PROTOCOL
        if p.is_file() and not self.planning:
            old = json.loads(p.read_text())
            diff = sorted(k for k in set(old) | set(proto) if old.get(k) != proto.get(k))
            if diff:
                k = diff[0]
                raise UserError(f"{p}: these runs were made under another protocol ({k}: {old.get(k)!r}, now "
                                f"{proto.get(k)!r}); use another --out")
        else:
            atomic_write_text(p, json.dumps(proto, indent=1) + "\n")
        self.protocol = proto

    # -- which model, which recipe ----------------------------------------------------------------
    def main_model(self) -> str:
        """The paper's network on 256×256 data; alexnet-cifar (a net of the authors' CIFAR-10 family) on small images."""
        return "alexnet" if self.data.large else "alexnet-cifar"

    def recipe(self, model: str) -> str:
        return config_mod.default_recipe(model)

    def base_config(self, model: str | None = None, quick: Mapping[str, Any] | None = None,
                    medium: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        """The recipe's fields for ``model`` with the scale applied: ``quick`` (the experiment's
        quick-scale fields) in quick mode, ``medium`` (default :data:`MEDIUM_SCALE`) in medium mode,
        :data:`TEST_SCALE` in test mode, nothing in full mode; then ``overrides``."""
        model = model or self.main_model()
        d = config_mod.load_recipe(self.recipe(model))
        # The plateau schedule reads the selection half only: the report half never steers training.
        d.update({"model": model, "data": self.data.spec, "device": self.device, "progress": self.progress,
                  "plateau_on": "select"})
        if self.workers is not None:
            d["workers"] = self.workers
        if self.scale == "quick":
            d.update(quick or {})
        elif self.scale == "medium":
            d.update(MEDIUM_SCALE if medium is None else medium)
        elif self.scale == "test":
            d.update(TEST_SCALE)
        return config_mod.merge(d, overrides)

    def config(self, base: Mapping[str, Any], variant: Variant, seed: int) -> TrainConfig:
        return config_mod.resolve(base=base, overrides={**variant.overrides, "seed": seed}, cuda=is_cuda,
                                  source=f"experiment {self.name}, variant {variant.name}")

    # -- training ---------------------------------------------------------------------------------
    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.out / RUNS / f"{variant.name}-s{seed}"

    def train(self, base: Mapping[str, Any], variant: Variant, seed: int) -> dict[str, Any]:
        """Train one (variant, seed) unless its run folder already holds the finished run; resume it
        if it was interrupted. Returns its result row."""
        cfg = self.config(base, variant, seed)
        rd = self.run_dir(variant, seed)
        if self.planning:
            return self.planned_row(variant, seed, cfg, rd)
        if run_folder.has_config(rd):
            old = run_folder.read_config(rd)
            new = cfg.to_dict()
            diff = sorted(k for k in set(_comparable(old)) | set(_comparable(new)) if old.get(k) != new.get(k))
            if diff:
                k = diff[0]
                raise UserError(f"{rd}: holds a run with a different config ({k}: {old.get(k)!r}, now {new.get(k)!r}); "
                                f"use another --out or remove that folder")
        if run_folder.has_summary(rd):
            self.log(f"[{self.name}] {rd.name}: finished earlier, skipped")
        elif run_folder.is_diverged(rd):
            self.log(f"[{self.name}] {rd.name}: diverged earlier, skipped")
        else:
            resume = (rd / run_folder.METRICS).exists() or any(rd.glob("checkpoint*")) or run_folder.has_config(rd)
            self.log(f"[{self.name}] {rd.name}: " + ("resuming" if resume else "training")
                     + f" ({cfg.model}, {cfg.epochs} epochs)")
            rd.mkdir(parents=True, exist_ok=True)
            try:
                # A run's warnings (settings inert on this data) reach the experiment's log even without
                # progress lines: an arm must not silently differ from what its name says.
                train_run(cfg, rd, resume=resume,
                          log=lambda s: self.log(s) if self.progress or s.startswith("warning:") else None)
            except TrainingDiverged as e:
                # A rate of the sweep at which the net diverges is a result (that rate fails), not an
                # error of the experiment: recorded, and counted at chance level.
                run_folder.write_diverged(rd, str(e))
                self.log(f"[{self.name}] {rd.name}: diverged ({e}); counted as a failed run at chance-level error")
            self.trained_now += 1
        return self.row(variant, seed, cfg, rd)

    def row(self, variant: Variant, seed: int, cfg: TrainConfig, rd: Path) -> dict[str, Any]:
        diverged = not run_folder.has_summary(rd) and run_folder.is_diverged(rd)
        summary = {} if diverged else run_folder.read_summary(rd)
        final = summary.get("final") or {}
        metrics = run_folder.read_metrics(rd)
        if diverged:  # chance level: the weights are not finite
            c = self.data.num_classes
            final = {"val_top1_err": 1 - 1 / c, "val_top5_err": max(0.0, 1 - 5 / c)}
        return {
            "diverged": diverged,
            "variant": variant.name,
            "seed": seed,
            **variant.fields,
            "top1_err": final.get("val_top1_err"),
            "top5_err": final.get("val_top5_err"),
            "train_top1_err": final.get("train_top1_err"),
            "train_loss": final.get("train_loss"),
            "val_loss": final.get("val_loss"),
            "epochs": cfg.epochs,
            "steps": summary.get("steps"),
            "time_s": summary.get("time_s"),
            "model": cfg.model,
            "run": str(rd.relative_to(self.out)),
            "_metrics": metrics,
        }

    def planned_row(self, variant: Variant, seed: int, cfg: TrainConfig, rd: Path) -> dict[str, Any]:
        """Planning: record the run (what trains, on how many images) and return a placeholder row
        (chance-level errors, no curve) for the experiment's code to carry on with."""
        n_train = min(cfg.train_subset or self.data.train_images, self.data.train_images)
        per_epoch = min(n_train, cfg.max_steps_per_epoch * cfg.batch_size) if cfg.max_steps_per_epoch else n_train
        evals = sum(1 for e in range(1, cfg.epochs + 1) if e % cfg.eval_every == 0 or e == cfg.epochs)
        self.planned.append({"run": rd.name, "model": cfg.model, "model_options": dict(cfg.model_options),
                             "batch_size": cfg.batch_size, "epochs": cfg.epochs, "images_per_epoch": per_epoch,
                             "train_images": per_epoch * cfg.epochs, "eval_images": evals * self.data.val_images,
                             "data": cfg.data})
        c = self.data.num_classes
        chance1, chance5 = 1 - 1 / c, max(0.0, 1 - 5 / c)
        return {"diverged": False, "variant": variant.name, "seed": seed, **variant.fields, "top1_err": chance1,
                "top5_err": chance5, "train_top1_err": chance1, "train_loss": None, "val_loss": None,
                "epochs": cfg.epochs, "steps": 0, "time_s": 0.0, "model": cfg.model, "run": str(rd.relative_to(self.out)),
                "_metrics": []}

    def _plan_eval(self, run: str | Path, images: int) -> None:
        """Planning: ``images`` more evaluated for run ``run`` (the halves, the training-set error)."""
        name = Path(run).name
        for p in reversed(self.planned):
            if p["run"] == name:
                p["eval_images"] += images
                return

    def train_all(self, base: Mapping[str, Any], variants: Sequence[Variant],
                  seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Train every variant for every seed (seed-major, so a first pass over the variants finishes early).

        Args:
            base: The config fields every run shares (the experiment's recipe at this scale).
            variants: The arms, each with its own overrides.
            seeds: The seeds (default the runner's).

        Returns:
            One results row per run (``variant``, ``seed``, ``top1_err``, ``top5_err``, ...); finished
            runs in ``DIR/runs/`` are read back, not retrained.
        """
        return [self.train(base, v, s) for s in (self.seeds if seeds is None else seeds) for v in variants]

    # -- fair comparisons: one sweep for every arm -------------------------------------------------
    def rates(self, base: Mapping[str, Any]) -> tuple[float, ...]:
        """The learning-rate sweep every arm gets, around the recipe's rate ε: ε/4 and ε at the
        quick and test scales, ε/2, ε, 2ε at the medium scale, ε/4, ε/2, ε, 2ε at full scale (the
        medium and full grids extend on the side of an edge that wins, :meth:`sweep`)."""
        lr = float(base["lr"])
        factors = {"full": (0.25, 0.5, 1.0, 2.0), "medium": (0.5, 1.0, 2.0)}.get(self.scale, (0.25, 1.0))
        return tuple(round(lr * f, 12) for f in factors)

    @property
    def sweep_seeds(self) -> list[int]:
        """The seeds every rate is trained with: all of them at full scale, the first otherwise
        (the others then train each arm at its chosen rate)."""
        return list(self.seeds) if self.scale == "full" else self.seeds[:1]

    def sweep(self, base: Mapping[str, Any], arms: Sequence[Variant], *, rates: Sequence[float] | None = None,
              score: Callable[[dict[str, Any]], float] | None = None,
              tie: Callable[[dict[str, Any]], float] | None = None,
              measure: Callable[[dict[str, Any]], None] | None = None,
              criterion: str = "top-1 error on the selection half of the validation images") -> Sweep:
        """Train every arm alike: each rate of ``rates`` (default :meth:`rates`) on the sweep seeds,
        then the other seeds at the arm's chosen rate — the rate with the lowest mean ``score``
        (default: selection-half top-1 error) over the sweep seeds, ties to the lowest mean ``tie``,
        then to the lower rate. ``measure`` adds fields to each row after training (default: the
        validation halves, :meth:`add_val_halves`)."""
        rates = tuple(rates if rates is not None else self.rates(base))
        measure = measure or self.add_val_halves
        score = score or (lambda r: r["select_top1_err"])

        def at(arm: Variant, lr: float) -> Variant:
            return Variant(f"{arm.name}-lr{lr:g}", {**arm.overrides, "lr": lr}, {**arm.fields, "arm": arm.name, "lr": lr})

        def trained(arm: Variant, lr: float, seed: int) -> dict[str, Any]:
            r = self.train(base, at(arm, lr), seed)
            measure(r)
            return r

        sweep_seeds = self.sweep_seeds
        rows = [trained(a, lr, s) for s in sweep_seeds for a in arms for lr in rates]
        scores: dict[str, dict[float, float]] = {}
        ties: dict[str, dict[float, float]] = {}

        def score_at(a: Variant, lr: float) -> None:
            mine = [r for r in rows if r["arm"] == a.name and r["lr"] == lr]
            vals = [score(r) for r in mine]
            scores[a.name][lr] = sum(vals) / len(vals)
            tvals = [tie(r) for r in mine] if tie else [0.0]
            ties[a.name][lr] = sum(tvals) / len(tvals)

        def best_of(a: str) -> float:
            return min(scores[a], key=lambda lr: (scores[a][lr], ties[a][lr], lr))

        for a in arms:
            scores[a.name], ties[a.name] = {}, {}
            for lr in rates:
                score_at(a, lr)
        # Bracketing: an arm whose best rate is an edge of what it tried gets the next rate beyond
        # that edge (the grid's ratio), at most max_extend on each side.
        ratio = (max(rates) / min(rates)) ** (1.0 / (len(rates) - 1)) if len(rates) > 1 else 2.0
        extended: dict[str, list[float]] = {a.name: [] for a in arms}
        bracketed: dict[str, bool] = {}
        for a in arms:
            added = {"low": 0, "high": 0}
            while True:
                tried = sorted(scores[a.name])
                b = best_of(a.name)
                side = "low" if b == tried[0] else "high" if b == tried[-1] else None
                if side is None:
                    bracketed[a.name] = True
                    break
                if added[side] >= self.max_extend:
                    bracketed[a.name] = False
                    break
                if self.planning:  # the bound: what the sweep may add, counted, not enumerated
                    self.plan_extensions += len(sweep_seeds) * self.max_extend
                    bracketed[a.name] = False
                    break
                # Two significant digits: 0.0322 becomes 0.032 (the grids' own rates are round numbers).
                lr = float(f"{tried[0] / ratio if side == 'low' else tried[-1] * ratio:.2g}")
                added[side] += 1
                extended[a.name].append(lr)
                self.log(f"[{self.name}] {a.name}: best rate {b:g} at the sweep's {side} edge; adding {lr:g}")
                rows += [trained(a, lr, s) for s in sweep_seeds]
                score_at(a, lr)
        best = {a.name: best_of(a.name) for a in arms}
        rows += [trained(a, best[a.name], s) for s in self.seeds if s not in sweep_seeds for a in arms]
        all_rates = tuple(sorted({lr for a in scores for lr in scores[a]}))
        for r in rows:
            r["chosen_lr"] = best[r["arm"]]
            r["chosen"] = r["lr"] == best[r["arm"]]
            r["sweep_rates"] = sorted(scores[r["arm"]])
            r["sweep_extended"] = list(extended[r["arm"]])
            r["bracketed"] = bracketed[r["arm"]]
        return Sweep(rows, [a.name for a in arms], all_rates, sweep_seeds, list(self.seeds), best, scores, criterion,
                     extended, bracketed)

    def add_val_halves(self, row: dict[str, Any]) -> None:
        """Top-1/top-5 error of a finished run's final weights (centre crop) on the selection and the
        report half of the validation images (:func:`selection_half`), cached in its run folder."""
        if row.get("diverged"):  # no finite weights to evaluate: chance level on both halves
            c = self.data.num_classes
            for name in ("select", "report"):
                row[f"{name}_top1_err"], row[f"{name}_top5_err"] = 1 - 1 / c, max(0.0, 1 - 5 / c)
            return
        if self.planning:
            self._plan_eval(row["run"], self.data.val_images)
            c = self.data.num_classes
            for name in ("select", "report"):
                row[f"{name}_top1_err"], row[f"{name}_top5_err"] = 1 - 1 / c, max(0.0, 1 - 5 / c)
            return
        cache = self.out / row["run"] / "val_halves.json"
        if cache.is_file():
            row.update(json.loads(cache.read_text()))
            return
        probs, labels = self.predict(row["run"], "val")
        sel = selection_half(labels.numpy())
        d: dict[str, Any] = {}
        for name, mask in (("select", sel), ("report", ~sel)):
            m = torch.from_numpy(mask)
            c1, c5 = topk_correct(probs[m], labels[m])
            n = max(1, int(m.sum()))
            d[f"{name}_top1_err"], d[f"{name}_top5_err"], d[f"{name}_images"] = 1 - c1 / n, 1 - c5 / n, int(m.sum())
        cache.write_text(json.dumps(d) + "\n")
        row.update(d)

    # -- evaluation of trained runs ---------------------------------------------------------------
    def predict(self, run: str | Path, split: str = "val", limit: int = 0,
                root: Path | None = None) -> tuple[Any, Any]:
        """Softmax probabilities (N×C float tensor) and labels of a finished run on ``split``
        (its first ``limit`` images when > 0), centre crop, the model in eval mode; of the run's own
        data, or of the prepared dataset at ``root``. Planning: uniform probabilities (nothing was
        trained)."""
        if self.planning:
            labels = PreparedDataset(root or self.data.root, split).labels
            n = len(labels) if limit <= 0 else min(limit, len(labels))
            self._plan_eval(run, n)
            return (torch.full((n, self.data.num_classes), 1.0 / self.data.num_classes),
                    torch.from_numpy(labels[:n].astype(np.int64)))
        device = pick_device(self.device)
        trained = load(self.out / run, device)
        # The run's own data (the baselines train the 32×32 nets on a downscaled copy).
        spec = run_folder.read_config(self.out / run).get("data")
        if root is None:
            root = self.data.root if spec in (None, self.data.spec) else Path(spec)
        ds = PreparedDataset(root, split)
        aug = augment_for(trained, ds)
        prec = Precision(device)
        n = len(ds) if limit <= 0 else min(limit, len(ds))
        probs = []
        for start in range(0, n, 256):
            idx = np.arange(start, min(n, start + 256))
            probs.append(predict_probs(trained.model, ds.read_batch(idx), aug, prec, ten_crop=False).cpu())
        return torch.cat(probs), torch.from_numpy(ds.labels[:n].astype(np.int64))

    # -- output -----------------------------------------------------------------------------------
    def write_results(self, rows: Sequence[Mapping[str, Any]]) -> Path:
        """``results.json``: the rows without private (``_``) fields."""
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        prov = self.provenance(rows)
        atomic_write_text(self.out / "provenance.json", json.dumps({k: v for k, v in prov.items()}, indent=1) + "\n")
        p = self.out / "results.json"
        atomic_write_text(p, json.dumps(clean, indent=1) + "\n")
        return p

    def scale_text(self, base: Mapping[str, Any]) -> str:
        d = self.data
        sub = base.get("train_subset") or 0
        steps = base.get("max_steps_per_epoch") or 0
        words = {"full": "full (the recipe's epochs on all the data)",
                 "medium": "medium (sized for about 30 minutes on 2 CPU cores on Fashion-MNIST; the scale whose "
                           "verdicts count on this data)",
                 "quick": "quick (a smoke test that the experiment runs, under 5 minutes on 2 CPU cores on the built-in "
                          "data: no directional claim is drawn from it)",
                 "test": "test (a few steps: the numbers mean nothing)"}[self.scale]
        parts = [f"scale **{words}**", f"{base.get('epochs')} epochs", f"batch {base.get('batch_size')}",
                 f"{sub if sub else d.train_images} of {d.train_images} training images",
                 f"at most {steps} steps per epoch" if steps else "full epochs",
                 f"{len(self.seeds)} seed(s) per variant"]
        return ", ".join(parts)

    def provenance(self, rows: Sequence[Mapping[str, Any]], env: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Which commits trained the runs and wrote the report, and whether any tree was dirty
        (each run folder's environment.json). ``citable``: one commit, a clean tree, throughout."""
        env = environment() if env is None else env
        runs: dict[str, tuple[Any, Any]] = {}
        for r in rows:
            run = r.get("run")
            e = run_folder.read_environment(self.out / str(run)) if run else None
            if e is not None:
                runs[str(run)] = (e.get("git_sha"), e.get("git_dirty"))
        shas = sorted({str(sha) for sha, _ in runs.values() if sha} | ({str(env["git_sha"])} if env.get("git_sha") else set()))
        dirty = sorted(run for run, (_, d) in runs.items() if d) + (["this report"] if env.get("git_dirty") else [])
        unknown = not env.get("git_sha") or any(sha is None for sha, _ in runs.values())
        citable = len(shas) == 1 and not dirty and not unknown
        if citable:
            text = f"**Provenance.** Every run and this report from commit `{shas[0]}`, a clean tree."
        else:
            why = []
            if dirty:
                why.append(f"from a dirty tree (uncommitted changes): {', '.join(dirty[:5])}"
                           + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else ""))
            if len(shas) > 1:
                why.append(f"from {len(shas)} commits ({', '.join(s[:12] for s in shas)})")
            if unknown:
                why.append("some without a known commit")
            text = "**Provenance: not citable as a result of one commit.** Produced " + "; ".join(why) + "."
        return {"citable": citable, "shas": shas, "dirty": dirty, "text": text}

    def write_report(self, *, title: str, claim: str, sections: Sequence[str], base: Mapping[str, Any],
                     rows: Sequence[Mapping[str, Any]], figures: Sequence[str | Path] = (),
                     notes: Sequence[str] = (), row_columns: Sequence[str] | None = None) -> Path:
        """Write ``report.md``: the claim, the experiment's own sections (tables beside the paper's
        numbers), the figures, every run, the setup (data, scale, base config, command) and the
        machine.

        Args:
            title: The report's title.
            claim: The paper's claim, quoted with its §.
            sections: Markdown sections of the experiment's own (its tables and verdicts).
            base: The shared config, shown in the setup.
            rows: Every run's results row.
            figures: PNG files to show.
            notes: Lines added under the setup.
            row_columns: The columns of the runs table.

        Returns:
            The path of ``report.md``.
        """
        cols = list(row_columns or ["variant", "seed", "top1_err", "top5_err", "train_top1_err", "epochs", "time_s"])
        env = environment()
        d = self.data
        diverged = [str(r["run"]) for r in rows if r.get("diverged")]
        if diverged:
            notes = [f"{len(diverged)} run(s) diverged (a non-finite loss) and count at chance-level error: "
                     + ", ".join(f"`{d}`" for d in diverged) + ".", *notes]
        prov = self.provenance(rows, env)
        parts = [f"# Experiment `{self.name}`: {title}", prov["text"], f"**The paper's claim.** {claim}", *sections]
        for fig in figures:
            rel = Path(fig).relative_to(self.out) if Path(fig).is_absolute() else Path(fig)
            parts.append(f"![{rel.stem}]({rel.as_posix()})")
        if notes:
            parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in notes))
        parts.append("## Every run\n\n" + markdown_table([{k: r.get(k) for k in cols} for r in rows], cols,
                                                          formats={"*_err": "pct", "time_s": ".1f"}).rstrip("\n"))
        cfg_text = yaml.safe_dump({k: v for k, v in dict(base).items() if k not in ("progress",)}, sort_keys=False).rstrip()
        parts.append(
            "## Setup\n\n"
            f"- data: `{d.spec}` ({d.root}), images {d.image_size[0]}×{d.image_size[1]}, {d.num_classes} classes, "
            f"{d.train_images} train / {d.val_images} val images\n"
            f"- {self.scale_text(base)}\n"
            "- errors are on the validation split (centre crop of the final weights) unless a column says otherwise; "
            "± is the standard deviation over seeds\n"
            f"- command: `{' '.join(shlex.quote(a) for a in ['alexnet', *sys.argv[1:]]) if sys.argv and 'alexnet' in sys.argv[0] else 'alexnet experiment ' + self.name}`\n"
            f"- wall time of this invocation: {time.time() - self.t0:.0f} s ({self.trained_now} run(s) trained, the rest reused)\n\n"
            "Base config (each variant changes the fields its name says):\n\n```yaml\n" + cfg_text + "\n```")
        parts.append("## Protocol (written to protocol.json before the first run)\n\n"
                     + "\n".join(f"- {k.replace('_', ' ')}: {v}" for k, v in self.protocol.items()))
        env_rows = [{"": k, "value": v} for k, v in env.items()]
        parts.append("## Machine\n\n" + markdown_table(env_rows, ["", "value"]).rstrip("\n"))
        p = self.out / "report.md"
        atomic_write_text(p, "\n\n".join(parts) + "\n")
        return p

