"""The run folder: the names of a run's files and the one reader and writer of each.

Training writes (rank 0 only; :mod:`alexnet.engine.train` and :mod:`alexnet.engine.resume`):

- ``config.yaml``: the resolved config (:func:`write_config`; read back by :func:`read_config`, the
  one parser of it: ``--resume``, reports, experiments);
- ``environment.json``: :func:`alexnet.environment.environment` as the run (re)started;
- ``metrics.jsonl``: one JSON object per epoch, appended and fsynced (:func:`append_metrics`); on
  resume the rows of epochs the checkpoint has not seen are dropped (:func:`truncate_metrics`);
- ``checkpoints/`` (:mod:`alexnet.engine.checkpoint` names and rotates them) and, at the end,
  ``model.safetensors`` and ``summary.json``;
- ``torchelastic_run_id``: the torchrun job that started the run (:func:`started_by_job`).

Others add: ``eval.json`` (``alexnet evaluate``, :func:`record_eval`), ``diverged.json`` (an
experiment's run that stopped on a non-finite loss, :func:`write_diverged`), report.md and figures.
Every write is atomic (:func:`alexnet.files.atomic_write_text`), except the metrics' append.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from alexnet.config import TrainConfig, read_yaml, save_yaml
from alexnet.engine import checkpoint as ckpt
from alexnet.engine.metrics import read_metrics as _read_metrics_file
from alexnet.environment import environment
from alexnet.errors import UserError
from alexnet.files import atomic_write_bytes, atomic_write_text

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVAL = "eval.json"
ENVIRONMENT = "environment.json"
DIVERGED = "diverged.json"
WEIGHTS = ckpt.WEIGHTS
# The torchrun job that started the run (TORCHELASTIC_RUN_ID: torchrun's --rdzv-id, a fresh one with
# --standalone): when torchrun --max-restarts restarts the workers, the restarted command resumes
# the run only if this job started it (never another run that happens to be in the folder).
ELASTIC_RUN_ID = "torchelastic_run_id"

# metrics.jsonl fields that measure time rather than training: they differ between a resumed run
# and an uninterrupted one; every other field is identical.
TIMING_FIELDS = ("img_per_s", "epoch_time_s", "time_s")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


# -- config.yaml -------------------------------------------------------------------------------------


def has_config(run: Path) -> bool:
    """Whether ``run`` is a run folder (training writes config.yaml before anything else of it)."""
    return (Path(run) / CONFIG).is_file()


def read_config(run: Path) -> dict[str, Any]:
    """The run's saved config (RUN/config.yaml) as a mapping of fields: the base ``--resume``
    continues with, what reports and experiments read (:func:`alexnet.config.read_yaml`: no
    aliases, bounded)."""
    path = Path(run) / CONFIG
    d = read_yaml(path)
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a saved training config")
    return d


def write_config(run: Path, cfg: TrainConfig) -> None:
    save_yaml(cfg, Path(run) / CONFIG)


# -- metrics.jsonl -----------------------------------------------------------------------------------


def read_metrics(run: Path) -> list[dict]:
    """The run's per-epoch rows (:func:`alexnet.engine.metrics.read_metrics`); none yet: []."""
    p = Path(run) / METRICS
    return _read_metrics_file(p) if p.is_file() else []


def last_metrics(run: Path) -> dict[str, Any]:
    rows = read_metrics(run)
    return rows[-1] if rows else {}


def append_metrics(run: Path, row: dict[str, Any]) -> None:
    """One epoch's row, on disk (fsynced) before the epoch's checkpoint is written."""
    with open(Path(run) / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(run: Path, epochs_done: int) -> None:
    """On resume, keep only the rows of epochs that finished before the checkpoint (a row written
    after it, or torn by the kill, is dropped: the resumed run writes it again)."""
    p = Path(run) / METRICS
    if not p.exists():
        return
    rows = [r for r in _read_metrics_file(p) if r.get("epoch", 0) <= epochs_done]
    atomic_write_bytes(p, "".join(json.dumps(r) + "\n" for r in rows).encode())


def holds_run(run: Path) -> bool:
    """Whether training has started in ``run``: a metrics row or a checkpoint."""
    return (Path(run) / METRICS).exists() or ckpt.latest_checkpoint(Path(run)) is not None


# -- summary.json, environment.json, eval.json, diverged.json ---------------------------------------


def has_summary(run: Path) -> bool:
    return (Path(run) / SUMMARY).is_file()


def read_summary(run: Path) -> dict[str, Any]:
    """The finished run's summary (epochs, steps, the last epoch's row, time, weights)."""
    return json.loads((Path(run) / SUMMARY).read_text())


def write_summary(run: Path, summary: dict[str, Any]) -> None:
    _write_json(Path(run) / SUMMARY, summary)


def read_environment(run: Path) -> Any:
    """The training machine as recorded (:func:`alexnet.environment.environment`), or None."""
    p = Path(run) / ENVIRONMENT
    return _read_json(p) if p.is_file() else None


def write_environment(run: Path) -> None:
    _write_json(Path(run) / ENVIRONMENT, environment())


def read_eval(run: Path) -> dict[str, Any]:
    """RUN/eval.json: ``{"center": {"top1_err", "top5_err", "n"}, "ten_crop": {...}}``; {} when the
    run was not evaluated."""
    p = Path(run) / EVAL
    if not p.is_file():
        return {}
    d = _read_json(p)
    if not isinstance(d, dict):
        raise UserError(f"{p}: expected a JSON object")
    return d


def record_eval(run: Path, key: str, result: dict[str, object]) -> None:
    """Merge one evaluation ("center" or "ten_crop") into RUN/eval.json."""
    p = Path(run) / EVAL
    try:
        d = json.loads(p.read_text()) if p.exists() else {}
    except ValueError:
        d = {}  # unreadable: replaced by this evaluation rather than failing after it
    if not isinstance(d, dict):
        d = {}
    d[key] = {k: result[k] for k in ("top1_err", "top5_err", "n") if k in result}
    _write_json(p, d)


def is_diverged(run: Path) -> bool:
    return (Path(run) / DIVERGED).is_file()


def write_diverged(run: Path, error: str) -> None:
    """An experiment's run that stopped on a non-finite loss: the error, recorded as a result."""
    atomic_write_text(Path(run) / DIVERGED, json.dumps({"error": error}) + "\n")


# -- the torchrun job --------------------------------------------------------------------------------


def write_elastic_run_id(run: Path, run_id: str) -> None:
    atomic_write_text(Path(run) / ELASTIC_RUN_ID, run_id + "\n")


def started_by_job(run: Path, run_id: str | None) -> bool:
    """Whether the torchrun job ``run_id`` (TORCHELASTIC_RUN_ID) started the run in ``run``."""
    try:
        return (Path(run) / ELASTIC_RUN_ID).read_text().strip() == run_id
    except OSError:
        return False
