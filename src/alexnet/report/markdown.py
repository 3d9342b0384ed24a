"""A run's report.md (tables: :mod:`alexnet.report.tables`).

A run folder (written by training) holds:

- ``config.yaml``: the resolved training config (model, data, epochs, batch_size, lr, seed, ...;
  ``command``, if present, is the command line that started the run);
- ``metrics.jsonl``: one JSON object per epoch with at least ``epoch, lr, train_loss,
  train_top1_err, val_top1_err, val_top5_err`` (errors are fractions). Throughput is read from
  ``img_per_s`` and ``time_s`` (cumulative training wall time);
- ``eval.json`` (optional): ``{"center": {"top1_err", "top5_err"}, "ten_crop": {...}}``;
- ``environment.json`` (optional): :func:`alexnet.environment.environment` as recorded on the
  training machine;
- PNG figures (curves.png, filters.png, predictions.png, neighbors.png, confusion.png, ...).

:func:`write_run_report` turns whatever of these exists into ``report.md``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from alexnet.engine import run_folder
from alexnet.environment import environment
from alexnet.errors import UserError
from alexnet.files import atomic_write_text
from alexnet.report.tables import finite, format_value, markdown_table

__all__ = ["PAPER_REFERENCE", "write_run_report"]

# Table 2 of the paper: one CNN on ILSVRC-2012 validation, top-1 / top-5 error, averaged over the ten
# patches of §4.1. And torchvision's one-weird-trick AlexNet, centre crop (its acc@1 56.522 / acc@5 79.066).
PAPER_REFERENCE: list[dict[str, Any]] = [
    {"model": "paper, 1 CNN (Table 2)", "data": "ILSVRC-2012 val, 10-crop", "top1_err": 0.407, "top5_err": 0.182},
    {"model": "torchvision alexnet (one-weird-trick)", "data": "ILSVRC-2012 val, centre crop", "top1_err": 0.43478, "top5_err": 0.20934},
]

_IMAGENET_NAMES = {"imagenet", "imagenet-1k", "imagenet1k", "ilsvrc", "ilsvrc2012", "ilsvrc-2012", "ilsvrc12"}


def _table(*args: Any) -> str:
    """A table as a block of the report (whose parts are joined by blank lines)."""
    return markdown_table(*args).rstrip("\n")


def _last(rows: Sequence[dict], *keys: str) -> float | None:
    """The latest finite value of the first key present (validation may skip epochs)."""
    for key in keys:
        for r in reversed(rows):
            v = finite(r.get(key))
            if v is not None:
                return v
    return None


def _wall_seconds(rows: Sequence[dict]) -> float | None:
    # metrics.jsonl's time_s is the run's cumulative training wall time (see engine/train.py's loop).
    return _last(rows, "time_s")


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" + (f" ({seconds:.1f} s)" if seconds < 600 else "")


def _data_name(config: Mapping[str, Any]) -> str | None:
    data = config.get("data", config.get("dataset"))
    if isinstance(data, Mapping):
        data = data.get("name", data.get("source", data.get("dataset", data.get("root"))))
    return None if data is None else str(data)


def _model_name(config: Mapping[str, Any]) -> str | None:
    model = config.get("model")
    if isinstance(model, Mapping):
        model = model.get("name", model.get("arch"))
    return None if model is None else str(model)


def _is_imagenet(data: str | None) -> bool:
    if not data:
        return False
    d = Path(str(data)).name.lower()
    return d in _IMAGENET_NAMES or d.startswith("ilsvrc")


# Figures a run may hold, in reading order, with the paper's figure they correspond to.
_FIGURES: list[tuple[str, str]] = [
    ("curves.png", "Error rates and training loss per epoch; dotted lines mark learning-rate changes (§5)."),
    ("filters.png", "First-layer kernels, each normalised to full contrast (cf. the paper's Figure 3)."),
    ("predictions.png", "Validation images with their top-5 predictions, the correct class in red (cf. Figure 4, left)."),
    ("neighbors.png", "Nearest training images to validation images in the last hidden layer (cf. Figure 4, right)."),
    ("confusion.png", "Confusion matrix on validation, each row normalised by the true class's count."),
]

_ERR_HEADERS = {"top1_err": "top-1 error", "top5_err": "top-5 error"}
_EVAL_NAMES = {"center": "centre crop", "centre": "centre crop", "ten_crop": "10-crop, §4.1", "tencrop": "10-crop, §4.1"}


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report.md`` from what the run folder holds (see the module docstring); parts whose
    files are missing are left out. Returns the report's path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: not a run folder")
    config, metrics, evaluation, trained_env = _read_run(run)
    data = _data_name(config)
    out = (_title(run, config, metrics) + _what_was_run(config) + _results(metrics, evaluation) + _paper_context(data)
           + _figures(run) + _per_epoch(metrics) + _configuration(config) + _environment(trained_env))
    path = run / "report.md"
    atomic_write_text(path, "\n".join(out).rstrip() + "\n")
    return path


def _read_run(run: Path) -> tuple[dict[str, Any], list[dict], dict[str, Any], Any]:
    """config.yaml, metrics.jsonl, eval.json and environment.json, each empty when missing."""
    config = run_folder.read_config(run) if run_folder.has_config(run) else {}
    return config, run_folder.read_metrics(run), run_folder.read_eval(run), run_folder.read_environment(run)


def _title(run: Path, config: Mapping[str, Any], metrics: Sequence[dict]) -> list[str]:
    model, data = _model_name(config), _data_name(config)
    out: list[str] = [f"# Run report: {run.resolve().name}", ""]
    what = " ".join(
        s for s in [f"Model `{model}`" if model else "", f"trained on `{data}`" if data else "",
                    f"for {len(metrics)} epoch{'s' if len(metrics) != 1 else ''}" if metrics else ""] if s
    )
    if what:
        out += [what + ".", ""]
    return out


def _what_was_run(config: Mapping[str, Any]) -> list[str]:
    if "command" not in config:
        return []
    cmd = config["command"]
    cmd = " ".join(str(c) for c in cmd) if isinstance(cmd, (list, tuple)) else str(cmd)
    return ["## What was run", "", "```", cmd, "```", ""]


def _summary_rows(metrics: Sequence[dict]) -> list[dict[str, Any]]:
    """The final numbers of training: epochs, train error and loss, throughput, wall time."""
    summary: list[dict[str, Any]] = []
    if metrics:
        epochs = _last(metrics, "epoch")
        summary.append({"quantity": "epochs", "value": len(metrics) if epochs is None else int(epochs)})
        summary.append({"quantity": "final train top-1 error", "value": format_value(_last(metrics, "train_top1_err"), "pct")})
        summary.append({"quantity": "final train loss", "value": _last(metrics, "train_loss")})
        ips = _last(metrics, "img_per_s")
        summary.append({"quantity": "training throughput (img/s)", "value": None if ips is None else f"{ips:,.0f}"})
        summary.append({"quantity": "wall time (h:mm:ss)", "value": _duration(_wall_seconds(metrics))})
    return [r for r in summary if r["value"] is not None and r["value"] != "—"]


def _error_rows(metrics: Sequence[dict], evaluation: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Top-1/top-5 errors: the last validation in metrics.jsonl, then each evaluation in eval.json
    (centre crop, 10-crop, others); eval.json's scalar entries become notes."""
    errors: list[dict[str, Any]] = []
    if metrics and (_last(metrics, "val_top1_err") is not None or _last(metrics, "val_top5_err") is not None):
        errors.append({"evaluation": "validation, last epoch (metrics.jsonl)",
                       "top1_err": _last(metrics, "val_top1_err"), "top5_err": _last(metrics, "val_top5_err")})
    ordered = sorted(evaluation, key=lambda k: (k not in _EVAL_NAMES, list(_EVAL_NAMES).index(k) if k in _EVAL_NAMES else 0))
    notes: list[str] = []
    for key in ordered:
        value = evaluation[key]
        if isinstance(value, dict) and ("top1_err" in value or "top5_err" in value):
            row = {"evaluation": f"{_EVAL_NAMES.get(key, key)} (eval.json)", "top1_err": finite(value.get("top1_err")),
                   "top5_err": finite(value.get("top5_err"))}
            if "n" in value or "images" in value:
                row["images"] = value.get("n", value.get("images"))
            errors.append(row)
        elif not isinstance(value, (dict, list)):
            notes.append(f"- {key}: {format_value(value)}")
    return errors, notes


def _results(metrics: Sequence[dict], evaluation: Mapping[str, Any]) -> list[str]:
    summary = _summary_rows(metrics)
    errors, notes = _error_rows(metrics, evaluation)
    if not (summary or errors):
        return []
    out = ["## Results", ""]
    if summary:
        out += [_table(summary, ["quantity", "value"]), ""]
    if errors:
        cols = ["evaluation", "top1_err", "top5_err"] + (["images"] if any("images" in r for r in errors) else [])
        out += [_table(errors, cols, {"*_err": "pct"}, _ERR_HEADERS), ""]
    return out + notes + ([""] if notes else [])


def _paper_context(data: str | None) -> list[str]:
    """The paper's numbers, for context only (comparable in kind only on ImageNet)."""
    out = ["## The paper's numbers, for context", ""]
    if _is_imagenet(data):
        out += ["This run uses ImageNet, so these are comparable in kind; the paper's numbers average ten "
                "patches per image (§4.1) and come from about 90 epochs (§5).", ""]
    else:
        out += [f"These are on ImageNet (ILSVRC-2012, 1000 classes, 1.2M training images){'' if not data else f', not on `{data}`'}: "
                "they are **not comparable** with this run's numbers and are given only as context.", ""]
    return out + [_table(PAPER_REFERENCE, ["model", "data", "top1_err", "top5_err"], {"*_err": "pct"}, _ERR_HEADERS), ""]


def _figures(run: Path) -> list[str]:
    """The known figures in reading order, then any other PNG, each with its caption."""
    pngs = [name for name, _ in _FIGURES if (run / name).is_file()]
    known = {name for name, _ in _FIGURES}
    pngs += sorted(p.name for p in run.glob("*.png") if p.name not in known)
    if not pngs:
        return []
    out = ["## Figures", ""]
    captions = dict(_FIGURES)
    for name in pngs:
        stem = Path(name).stem
        out += [f"![{stem}]({name})", "", captions.get(name, stem.replace("_", " ") + "."), ""]
    return out


def _per_epoch(metrics: list[dict]) -> list[str]:
    """Per-epoch numbers: all of them for short runs; otherwise a sample that keeps the lr changes."""
    if not metrics:
        return []
    cols = [c for c in ["epoch", "lr", "train_loss", "train_top1_err", "val_top1_err", "val_top5_err", "img_per_s"]
            if any(c in r for r in metrics)]
    shown = metrics
    if len(metrics) > 40:
        step = math.ceil(len(metrics) / 30)
        keep = {0, len(metrics) - 1} | set(range(0, len(metrics), step))
        keep |= {i for i in range(1, len(metrics)) if metrics[i].get("lr") != metrics[i - 1].get("lr")}
        shown = [metrics[i] for i in sorted(keep)]
    out = ["## Per epoch", ""]
    if shown is not metrics:
        out += [f"{len(shown)} of {len(metrics)} epochs: one in {step}, the last, and each learning-rate change.", ""]
    heads = {"train_loss": "train loss", "train_top1_err": "train top-1", "val_top1_err": "val top-1",
             "val_top5_err": "val top-5", "img_per_s": "img/s"}
    return out + [_table(shown, cols, {"*_err": "pct", "lr": ".4g", "train_loss": ".4f", "img_per_s": ".0f"}, heads), ""]


def _configuration(config: Mapping[str, Any]) -> list[str]:
    if not config:
        return []
    return ["## Configuration", "", "```yaml", yaml.safe_dump(dict(config), sort_keys=False).rstrip(), "```", ""]


def _environment(trained_env: Any) -> list[str]:
    """The training machine (environment.json) when recorded, and the machine writing the report."""
    out = ["## Environment", ""]
    if trained_env:
        out += ["Training machine (environment.json):", "",
                _table([{"key": k, "value": v} for k, v in trained_env.items()], ["key", "value"]), ""]
        out += ["Report written on:", ""]
    return out + [_table([{"key": k, "value": v} for k, v in environment().items()], ["key", "value"]), ""]
