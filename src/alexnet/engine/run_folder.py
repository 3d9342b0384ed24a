"""The run folder: the names of a run's files and the one reader and writer of each.

Training writes (rank 0 only; :mod:`alexnet.engine.train` and :mod:`alexnet.engine.resume`):

- ``config.yaml``: the resolved config (:func:`write_config`; read back by :func:`read_config`, the
  one parser of it: ``--resume``, reports, experiments);
- ``environment.json``: :func:`alexnet.environment.environment` as the run (re)started;
- ``metrics.jsonl``: one JSON object per epoch, appended and fsynced (:func:`append_metrics`); on
  resume the rows of epochs the checkpoint has not seen are dropped (:func:`truncate_metrics`);
- ``checkpoints/`` (:mod:`alexnet.engine.checkpoint` names and rotates them) and, at the end,
  ``model.safetensors`` and ``summary.json``;
- ``torchelastic_run_id``: the torchrun job that started the run (:func:`started_by_job`);
- ``tb/`` with tensorboard: the per-epoch scalars and, in ``tb/steps``, the per-step ones
  (:func:`open_tensorboard`, :func:`record_epoch`).

Others add: ``eval.json`` (``alexnet evaluate``, :func:`record_eval`), ``diverged.json`` (an
experiment's run that stopped on a non-finite loss, :func:`write_diverged`), report.md and figures.
Every write is atomic (:func:`alexnet.files.atomic_write_text`), except the metrics' append.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

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


def write_start(run: Path, cfg: TrainConfig, *, resume: bool, epochs_done: int) -> None:
    """Rank 0, as a process starts training: temporaries a killed process left are removed, the
    config and the environment written; on resume the metrics of epochs the checkpoint has not
    seen (after ``epochs_done``) are dropped."""
    ckpt.remove_stale_temporaries(Path(run))
    if resume:
        truncate_metrics(run, epochs_done)
    write_config(run, cfg)
    write_environment(run)


# -- TensorBoard (RUN/tb) ----------------------------------------------------------------------------


def record_epoch(run: Path, row: dict[str, Any], tb: Any = None) -> None:
    """Rank 0: the epoch's row into metrics.jsonl and, with a TensorBoard writer, RUN/tb."""
    append_metrics(run, row)
    if tb is not None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                tb.add_scalar(k, v, row["epoch"])
        tb.flush()


class StepScalars:
    """Per-step TensorBoard scalars in RUN/tb/steps, against the optimizer step: every
    ``tensorboard_every``-th step's loss (the mean over the global batch) and learning rate, and
    the images per second since the previous such step of the epoch (evaluation and epoch
    boundaries are not counted). Their own event files: the per-epoch scalars of RUN/tb count
    epochs, and a resumed run hides what each logged after its checkpoint by its own counter."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.last: tuple[float, float] | None = None  # (time, images of the epoch) at the previous point

    def start_epoch(self, images: float) -> None:
        self.last = (time.time(), images)

    def log(self, step: int, loss: float, lr: float, images: float) -> None:
        """Called right after a read of the device (the time is that of a finished step)."""
        now = time.time()
        self.writer.add_scalar("step/train_loss", loss, step)
        self.writer.add_scalar("step/lr", lr, step)
        if self.last is not None and now > self.last[0] and images > self.last[1]:
            self.writer.add_scalar("step/img_per_s", (images - self.last[1]) / (now - self.last[0]), step)
        self.last = (now, images)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(run: Path, cfg: TrainConfig, *, epoch: int, global_step: int, is_main: bool,
                     log: Callable[[str], None]) -> tuple[Any, StepScalars | None]:
    """The SummaryWriter of RUN/tb and the per-step scalars of RUN/tb/steps (rank 0, with
    tensorboard=True; per step when tensorboard_every > 0), or None; ``epoch`` and ``global_step``:
    where the run starts (a resumed one hides what the killed process logged after them)."""
    if not cfg.tensorboard and cfg.tensorboard_every != TrainConfig.tensorboard_every:
        log(f"warning: tensorboard_every={cfg.tensorboard_every} has no effect without tensorboard (--tensorboard)")
    if not (cfg.tensorboard and is_main):
        return None, None
    try:
        # Optional and slow to import: only runs that ask for TensorBoard load it.
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("tensorboard is not installed: pip install 'alexnet[tensorboard]'; logging to metrics.jsonl only")
        return None, None
    # purge_step: on resume, TensorBoard hides the events the killed process logged after its
    # checkpoint (they are logged again): epochs in RUN/tb, steps in RUN/tb/steps.
    tb = SummaryWriter(str(Path(run) / "tb"), purge_step=epoch + 1 if epoch > 0 else None)
    steps = None
    if cfg.tensorboard_every:
        steps = StepScalars(SummaryWriter(str(Path(run) / "tb" / "steps"),
                                          purge_step=global_step + 1 if global_step > 0 else None))
    return tb, steps
