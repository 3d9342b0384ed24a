"""The paper's claims as one-command experiments (``alexnet experiment NAME``).

Each experiment module exposes ``TITLE``, ``CLAIM`` and ``run(runner) -> Path`` (the report), and uses
:class:`alexnet.experiments.runner.Runner` to train its variants × seeds and write ``report.md``,
``results.json`` and its PNG plots.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from alexnet.errors import UserError


@dataclass(frozen=True)
class ExperimentInfo:
    """One experiment of the registry.

    An experiment is a module (``module``) with ``TITLE``, ``CLAIM`` and ``run(runner) -> Path`` that
    trains its variants with :meth:`~alexnet.experiments.runner.Runner.train_all` and writes
    ``report.md``, ``results.json`` and its plots with
    :meth:`~alexnet.experiments.runner.Runner.write_report`; its results then join the
    documentation's table through :mod:`alexnet.experiments.summary`.

    Attributes:
        name: The name ``alexnet experiment NAME`` takes.
        module: The module that implements it.
        summary: What it measures, one line (for ``--help`` and the documentation).
    """

    name: str
    module: str
    summary: str


_REGISTRY: dict[str, ExperimentInfo] = {
    e.name: e
    for e in (
        ExperimentInfo("relu-vs-tanh", "alexnet.experiments.relu_vs_tanh",
                       "Figure 1: epochs and wall time to a training error (--threshold, paper: 25%), ReLU vs tanh, and "
                       "their ratio (paper: 6×)"),
        ExperimentInfo("lrn", "alexnet.experiments.lrn", "§3.3: local response normalisation vs none"),
        ExperimentInfo("pooling", "alexnet.experiments.pooling", "§3.4: overlapping 3×3/2 max-pooling vs 2×2/2"),
        ExperimentInfo("dropout", "alexnet.experiments.dropout", "§4.2: train–val gap with and without dropout"),
        ExperimentInfo("augmentation", "alexnet.experiments.augmentation",
                       "§4.1: no augmentation / crops + flips / + PCA colour noise"),
        ExperimentInfo("depth", "alexnet.experiments.depth", "§7: removing each middle conv layer"),
        ExperimentInfo("towers", "alexnet.experiments.towers", "§3.2: two towers vs one tower with half the kernels"),
        ExperimentInfo("baselines", "alexnet.experiments.baselines",
                       "pre-2012: SIFT + Fisher vectors + SVM and HOG + SVM vs LeNet-5 vs the AlexNet family, "
                       "top-1/top-5 and training time"),
        ExperimentInfo("data-scale", "alexnet.experiments.data_scale",
                       "the thesis: test error against training-set size (nested subsets), SIFT + FVs and HOG with "
                       "SVMs vs LeNet-5 and the AlexNet family, with where the CNN overtakes and the compute"),
        ExperimentInfo("ensemble", "alexnet.experiments.ensemble",
                       "§6: softmax average of N independently trained nets vs each single net (paper: 5 vs 1 CNN)"),
    )
}


FACTORS_EXPERIMENT = "relu-vs-tanh"  # the one experiment with a factor study and a threshold


def names() -> list[str]:
    return list(_REGISTRY)


def info(name: str) -> ExperimentInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown experiment {name!r}; accepted: {', '.join(names())}") from None


def default_seeds(name: str, scale: str) -> int:
    """Seeds per arm when --seeds is not given: 3 (mean ± std and a Welch interval; at the quick
    and medium scales the learning-rate sweep runs on the first, the others at each arm's chosen
    rate), 2 at the test scale; an experiment may set its own (the ensemble's N)."""
    mod = importlib.import_module(info(name).module)
    own = getattr(mod, "DEFAULT_SEEDS", None)
    if own and scale in own:
        return int(own[scale])
    return 2 if scale == "test" else 3


def run_experiment(name: str, data: str, out: str | Path, *, quick: bool = False, seeds: int | None = None,
                   scale: str | None = None, device: str = "auto", workers: int | None = None,
                   log: Callable[[str], None] = print, progress: bool = False, factors: bool = False,
                   threshold: float | None = None) -> Path:
    """Run experiment ``name`` on ``data`` into ``out``: what ``alexnet experiment`` runs.

    Args:
        name: One of :func:`names`.
        data: A prepared dataset's folder, or ``synthetic``.
        out: The experiment's folder (its runs go to ``out/runs/``; finished runs are reused).
        quick: The quick scale (a smoke test), unless ``scale`` is given.
        seeds: Seeds per arm (default :func:`default_seeds`).
        scale: ``"test"``, ``"quick"``, ``"medium"`` or ``"full"``; overrides ``quick``.
        device: ``auto``, ``cpu``, ``cuda``, ...
        workers: Loader workers per run.
        log: Where the lines go.
        progress: Draw progress bars.
        factors: relu-vs-tanh's one-factor-at-a-time study (refused for the others).
        threshold: relu-vs-tanh's training error to reach (default 25%; refused for the others).

    Returns:
        The path of its ``report.md``.
    """
    # Here, not at the top: the registry above is read by the CLI's parser, and the runner imports
    # torch and the whole engine.
    from alexnet.experiments.runner import Runner, resolve_scale

    e = info(name)
    check_options(name, factors, threshold)
    mod = importlib.import_module(e.module)
    s = resolve_scale(quick, scale)
    runner = Runner(name, data, out, quick=quick, seeds=seeds or default_seeds(name, s), scale=s, device=device,
                    workers=workers, log=log, progress=progress, factors=factors, threshold=threshold)
    return mod.run(runner)


def check_options(name: str, factors: bool, threshold: float | None) -> None:
    """--factors and --threshold apply to relu-vs-tanh only; a threshold is a training error in (0, 1)."""
    if factors and name != FACTORS_EXPERIMENT:
        raise UserError(f"--factors applies to experiment {FACTORS_EXPERIMENT!r} only, not {name!r}")
    if threshold is not None:
        if name != FACTORS_EXPERIMENT:
            raise UserError(f"--threshold applies to experiment {FACTORS_EXPERIMENT!r} only, not {name!r}")
        if not 0.0 < threshold < 1.0:
            raise UserError(f"--threshold {threshold}: a training error strictly between 0 and 1 (the paper: 0.25)")


__all__ = ["ExperimentInfo", "default_seeds", "info", "names", "run_experiment"]
