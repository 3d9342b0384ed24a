"""Markdown reports: tables, the machine a result came from, and a run's report.md.

A run folder (written by training) holds:

- ``config.yaml``: the resolved training config (model, data, epochs, batch_size, lr, seed, ...;
  ``command``, if present, is the command line that started the run);
- ``metrics.jsonl``: one JSON object per epoch with at least ``epoch, lr, train_loss,
  train_top1_err, val_top1_err, val_top5_err`` (errors are fractions). Throughput is read from
  ``img_per_s`` and ``time_s`` (cumulative training wall time);
- ``eval.json`` (optional): ``{"center": {"top1_err", "top5_err"}, "ten_crop": {...}}``;
- ``environment.json`` (optional): :func:`environment` as recorded on the training machine;
- PNG figures (curves.png, filters.png, predictions.png, neighbors.png, confusion.png, ...).

:func:`write_run_report` turns whatever of these exists into ``report.md``.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from alexnet.errors import UserError

__all__ = ["markdown_table", "format_value", "environment", "write_run_report", "read_metrics", "PAPER_REFERENCE"]

# Table 2 of the paper: one CNN on ILSVRC-2012 validation, top-1 / top-5 error, averaged over the ten
# patches of §4.1. And torchvision's one-weird-trick AlexNet, centre crop (its acc@1 56.522 / acc@5 79.066).
PAPER_REFERENCE: list[dict[str, Any]] = [
    {"model": "paper, 1 CNN (Table 2)", "data": "ILSVRC-2012 val, 10-crop", "top1_err": 0.407, "top5_err": 0.182},
    {"model": "torchvision alexnet (one-weird-trick)", "data": "ILSVRC-2012 val, centre crop", "top1_err": 0.43478, "top5_err": 0.20934},
]

_IMAGENET_NAMES = {"imagenet", "imagenet-1k", "imagenet1k", "ilsvrc", "ilsvrc2012", "ilsvrc-2012", "ilsvrc12"}


# --------------------------------------------------------------------------- tables
def format_value(value: Any, fmt: str | None = None) -> str:
    """One table cell. ``fmt`` is ``"pct"`` (a fraction shown as a percentage, 2 decimals:
    0.407 → ``40.70%``), a format spec (``".3f"``, ``",d"``) or a template (``"{:.1e}"``); without one,
    floats get 4 significant digits (no exponent below 10⁶), ints and strings are shown as they are,
    ``None`` as an em dash. ``|`` and newlines are escaped so a cell cannot break the table.
    """
    if value is None:
        return "—"
    if fmt and not isinstance(value, (str, bool)):
        try:
            if fmt == "pct":
                return f"{100.0 * float(value):.2f}%"
            return fmt.format(value) if "{" in fmt else format(value, fmt)
        except (TypeError, ValueError):
            pass  # a value the format does not fit (a string in a numeric column): shown as is
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            text = str(value)
        elif value == 0 or 1e-4 <= abs(value) < 1e4:
            text = f"{value:.4g}"
        elif 1e4 <= abs(value) < 1e6:
            text = f"{value:.0f}"
        else:  # tiny or huge: an exponent reads better than a row of zeros
            text = f"{value:.3g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(format_value(v, fmt) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _format_for(column: str, formats: Mapping[str, str] | None) -> str | None:
    """An exact column name wins; otherwise the first glob pattern that matches (``"*_err": "pct"``)."""
    if not formats:
        return None
    if column in formats:
        return formats[column]
    for pattern, fmt in formats.items():
        if fnmatch.fnmatchcase(column, pattern):
            return fmt
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def markdown_table(
    rows: list[dict],
    columns: list[str] | None = None,
    formats: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """A GitHub-flavoured markdown table: header, separator, one line per row; ends with a newline.

    ``columns`` defaults to every key in order of first appearance; a missing value is an em dash.
    ``formats`` maps a column (or a glob such as ``"*_err"``) to a format for :func:`format_value`,
    e.g. ``{"top1_err": "pct"}`` shows 0.407 as ``40.70%``. ``headers`` renames columns in the header
    line only. Numeric columns are right-aligned.
    """
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    if not columns:
        return ""
    numeric = {c: any(_is_number(r.get(c)) for r in rows) and all(r.get(c) is None or _is_number(r.get(c)) for r in rows) for c in columns}
    header = "| " + " | ".join(format_value((headers or {}).get(c, c)) for c in columns) + " |"
    sep = "|" + "|".join("---:" if numeric[c] else "---" for c in columns) + "|"
    body = ["| " + " | ".join(format_value(r.get(c), _format_for(c, formats)) for c in columns) + " |" for r in rows]
    return "\n".join([header, sep, *body]) + "\n"


def _table(*args: Any) -> str:
    """A table as a block of the report (whose parts are joined by blank lines)."""
    return markdown_table(*args).rstrip("\n")


# --------------------------------------------------------------------------- environment
def _cpu_name() -> str:
    name = platform.processor()
    if not name or name in ("x86_64", "aarch64", "arm", "i386"):
        try:  # Linux leaves platform.processor() as the architecture; the model is in /proc/cpuinfo
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return name or platform.machine()


def _git_sha() -> str | None:
    """The commit of the checkout this package runs from (read-only; None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=True)
        sha = out.stdout.strip()
        return sha or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """The machine and software a number came from: platform, processor, CPU count, Python, torch,
    torchvision and numpy versions, the CUDA device (None without one), the package's git commit (None
    outside a checkout) and the UTC date."""
    import numpy
    import torch

    try:
        import torchvision

        tv: str | None = torchvision.__version__
    except ImportError:
        tv = None
    cuda = None
    try:
        if torch.cuda.is_available():
            cuda = torch.cuda.get_device_name(torch.cuda.current_device())
    except Exception:  # a broken driver must not stop a report
        cuda = None
    from alexnet import __version__

    return {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": tv,
        "numpy": numpy.__version__,
        "cuda_device": cuda,
        "cuda_version": torch.version.cuda if cuda else None,
        "alexnet": __version__,
        "git_sha": _git_sha(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


# --------------------------------------------------------------------------- run report
def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl. A torn last line (training killed mid-write) is dropped; a bad
    line elsewhere is an error naming the file and line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    numbered = [(i + 1, s) for i, s in enumerate(lines) if s.strip()]
    for j, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if j == len(numbered) - 1:
                break
            raise UserError(f"{path}:{lineno}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line")
        rows.append(row)
    return rows


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _last(rows: Sequence[dict], *keys: str) -> float | None:
    """The latest finite value of the first key present (validation may skip epochs)."""
    for key in keys:
        for r in reversed(rows):
            v = _num(r.get(key))
            if v is not None:
                return v
    return None


def _wall_seconds(rows: Sequence[dict]) -> float | None:
    # metrics.jsonl's time_s is the run's cumulative training wall time (see engine/train.py).
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
    config: dict[str, Any] = {}
    if (run / "config.yaml").is_file():
        loaded = _read_yaml(run / "config.yaml")
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"{run / 'config.yaml'}: expected a mapping of settings")
        config = loaded or {}
    metrics = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    evaluation: dict[str, Any] = {}
    if (run / "eval.json").is_file():
        loaded = _read_json(run / "eval.json")
        if not isinstance(loaded, dict):
            raise UserError(f"{run / 'eval.json'}: expected a JSON object")
        evaluation = loaded
    env_file = run / "environment.json"
    trained_env = _read_json(env_file) if env_file.is_file() else None

    model, data = _model_name(config), _data_name(config)
    out: list[str] = [f"# Run report: {run.resolve().name}", ""]
    what = " ".join(
        s for s in [f"Model `{model}`" if model else "", f"trained on `{data}`" if data else "",
                    f"for {len(metrics)} epoch{'s' if len(metrics) != 1 else ''}" if metrics else ""] if s
    )
    if what:
        out += [what + ".", ""]

    if "command" in config:
        cmd = config["command"]
        cmd = " ".join(str(c) for c in cmd) if isinstance(cmd, (list, tuple)) else str(cmd)
        out += ["## What was run", "", "```", cmd, "```", ""]

    # ---- final numbers
    summary: list[dict[str, Any]] = []
    if metrics:
        epochs = _last(metrics, "epoch")
        summary.append({"quantity": "epochs", "value": len(metrics) if epochs is None else int(epochs)})
        summary.append({"quantity": "final train top-1 error", "value": format_value(_last(metrics, "train_top1_err"), "pct")})
        summary.append({"quantity": "final train loss", "value": _last(metrics, "train_loss")})
        ips = _last(metrics, "img_per_s", "images_per_s", "throughput")
        summary.append({"quantity": "training throughput (img/s)", "value": None if ips is None else f"{ips:,.0f}"})
        summary.append({"quantity": "wall time (h:mm:ss)", "value": _duration(_wall_seconds(metrics))})
    summary = [r for r in summary if r["value"] is not None and r["value"] != "—"]

    errors: list[dict[str, Any]] = []
    if metrics and (_last(metrics, "val_top1_err") is not None or _last(metrics, "val_top5_err") is not None):
        errors.append({"evaluation": "validation, last epoch (metrics.jsonl)",
                       "top1_err": _last(metrics, "val_top1_err"), "top5_err": _last(metrics, "val_top5_err")})
    ordered = sorted(evaluation, key=lambda k: (k not in _EVAL_NAMES, list(_EVAL_NAMES).index(k) if k in _EVAL_NAMES else 0))
    notes: list[str] = []
    for key in ordered:
        value = evaluation[key]
        if isinstance(value, dict) and ("top1_err" in value or "top5_err" in value):
            row = {"evaluation": f"{_EVAL_NAMES.get(key, key)} (eval.json)", "top1_err": _num(value.get("top1_err")),
                   "top5_err": _num(value.get("top5_err"))}
            if "n" in value or "images" in value:
                row["images"] = value.get("n", value.get("images"))
            errors.append(row)
        elif not isinstance(value, (dict, list)):
            notes.append(f"- {key}: {format_value(value)}")

    if summary or errors:
        out += ["## Results", ""]
        if summary:
            out += [_table(summary, ["quantity", "value"]), ""]
        if errors:
            cols = ["evaluation", "top1_err", "top5_err"] + (["images"] if any("images" in r for r in errors) else [])
            out += [_table(errors, cols, {"*_err": "pct"}, _ERR_HEADERS), ""]
        out += notes + ([""] if notes else [])

    # ---- the paper's numbers, for context only
    out += ["## The paper's numbers, for context", ""]
    if _is_imagenet(data):
        out += ["This run uses ImageNet, so these are comparable in kind; the paper's numbers average ten "
                "patches per image (§4.1) and come from about 90 epochs (§5).", ""]
    else:
        out += [f"These are on ImageNet (ILSVRC-2012, 1000 classes, 1.2M training images){'' if not data else f', not on `{data}`'}: "
                "they are **not comparable** with this run's numbers and are given only as context.", ""]
    out += [_table(PAPER_REFERENCE, ["model", "data", "top1_err", "top5_err"], {"*_err": "pct"}, _ERR_HEADERS), ""]

    # ---- figures: the known ones in order, then any other PNG
    pngs = [name for name, _ in _FIGURES if (run / name).is_file()]
    known = {name for name, _ in _FIGURES}
    pngs += sorted(p.name for p in run.glob("*.png") if p.name not in known)
    if pngs:
        out += ["## Figures", ""]
        captions = dict(_FIGURES)
        for name in pngs:
            stem = Path(name).stem
            out += [f"![{stem}]({name})", "", captions.get(name, stem.replace("_", " ") + "."), ""]

    # ---- per-epoch numbers (all of them for short runs; otherwise a sample that keeps the lr changes)
    if metrics:
        cols = [c for c in ["epoch", "lr", "train_loss", "train_top1_err", "val_top1_err", "val_top5_err", "img_per_s"]
                if any(c in r for r in metrics)]
        shown = metrics
        if len(metrics) > 40:
            step = math.ceil(len(metrics) / 30)
            keep = {0, len(metrics) - 1} | set(range(0, len(metrics), step))
            keep |= {i for i in range(1, len(metrics)) if metrics[i].get("lr") != metrics[i - 1].get("lr")}
            shown = [metrics[i] for i in sorted(keep)]
        out += ["## Per epoch", ""]
        if shown is not metrics:
            out += [f"{len(shown)} of {len(metrics)} epochs: one in {step}, the last, and each learning-rate change.", ""]
        heads = {"train_loss": "train loss", "train_top1_err": "train top-1", "val_top1_err": "val top-1",
                 "val_top5_err": "val top-5", "img_per_s": "img/s"}
        out += [_table(shown, cols, {"*_err": "pct", "lr": ".4g", "train_loss": ".4f", "img_per_s": ".0f"}, heads), ""]

    if config:
        out += ["## Configuration", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]

    out += ["## Environment", ""]
    if trained_env:
        out += ["Training machine (environment.json):", "",
                _table([{"key": k, "value": v} for k, v in trained_env.items()], ["key", "value"]), ""]
        out += ["Report written on:", ""]
    out += [_table([{"key": k, "value": v} for k, v in environment().items()], ["key", "value"]), ""]

    path = run / "report.md"
    from alexnet.files import atomic_write_text

    atomic_write_text(path, "\n".join(out).rstrip() + "\n")
    return path
