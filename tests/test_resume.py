"""Exact resume: runs killed with SIGKILL at varied moments, or stopped with SIGTERM/SIGINT, then
resumed (several times), end with the same model.safetensors, bit for bit, as an uninterrupted run.

Each run is a real ``python -m alexnet train`` process. To kill it at a chosen moment, the process
runs through a small launcher that wraps one engine function with a pause (it writes a marker
file, then waits); the test sees the marker and sends the signal. The wrappers only wait: the
numbers are computed by the unmodified engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet.data.sources import synthetic
from alexnet.engine import checkpoint as ckpt
from alexnet.engine.run_folder import TIMING_FIELDS
from launch_hooks import STOP_FLAG_HOOK

LAUNCHER = STOP_FLAG_HOOK + r"""
import os, sys, time
from pathlib import Path
import alexnet.engine.train as T
import alexnet.engine.checkpoint as C
import alexnet.engine.run_folder as RF
from alexnet.engine.fast_step import FastStep

spec = os.environ.get("PAUSE_AT", "")
marker = Path(os.environ.get("PAUSE_MARKER", os.devnull))
kind, _, nth = spec.partition(":")
nth = int(nth or 0)
calls = {"n": 0}

def arrived(until_signal=False):
    calls["n"] += 1
    if calls["n"] != nth:
        return
    marker.write_text(kind)
    t0 = time.time()
    while time.time() - t0 < 60:  # SIGKILL ends this; a handled signal returns (or raises) early
        if until_signal and stops and stops[-1].signum:
            return
        time.sleep(0.01)

if kind in ("step", "step-signal"):  # inside this process's nth training step, before its update
    orig_step = FastStep.__call__
    def step_fn(self, *a, **k):
        arrived(until_signal=kind == "step-signal")
        return orig_step(self, *a, **k)
    FastStep.__call__ = step_fn
elif kind == "eval":  # at the start of this process's nth evaluation
    orig_validate = T.validate
    def validate(*a, **k):
        arrived()
        return orig_validate(*a, **k)
    T.validate = validate
elif kind == "ckpt":  # right after this process's nth checkpoint is on disk
    orig_save = C.save_checkpoint
    def save_checkpoint(*a, **k):
        path = orig_save(*a, **k)
        arrived()
        return path
    C.save_checkpoint = save_checkpoint
elif kind == "metrics":  # after an epoch's metrics row, before that epoch's checkpoint
    orig_append = RF.append_metrics
    def append_metrics(*a, **k):
        orig_append(*a, **k)
        arrived()
    RF.append_metrics = append_metrics

from alexnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.build(tmp_path_factory.mktemp("resume") / "ds", size=36, train_per_class=20, val_per_class=5)


def train_args(data: Path, out: Path) -> list[str]:
    # 200 images / 16 = 12 steps an epoch, 36 in all; checkpoints at steps 5, 10, 12, 15, 20, 24, ...
    # Dropout 0.5, random crops, flips and PCA noise: every source of randomness is in play.
    return ["train", "--data", str(data), "--model", "alexnet-cifar", "--out", str(out), "--epochs", "3",
            "--batch-size", "16", "--workers", "0", "--no-progress", "--save-every", "5", "--keep", "2", "--seed", "3",
            "--model-opt", "dropout=0.5"]


def resume_args(out: Path) -> list[str]:
    return ["train", "--out", str(out), "--resume", "--workers", "0", "--no-progress"]


def launch(args: list[str], pause_at: str = "", marker: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PAUSE_AT": pause_at, "PAUSE_MARKER": str(marker or os.devnull)}
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    t0 = time.time()
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before the pause point:\n{out[-1500:]}\n{err[-1500:]}")
        assert time.time() - t0 < timeout, "pause point not reached"
        time.sleep(0.01)
    marker.unlink()


def kill_at(args: list[str], pause_at: str, tmp: Path) -> None:
    marker = tmp / "marker"
    p = launch(args, pause_at, marker)
    wait_for(marker, p)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL


def finish(args: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def metrics_without_timing(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "reference"
    finish(train_args(data, out))
    return out


def assert_same_run(run: Path, reference: Path) -> None:
    assert (run / ckpt.WEIGHTS).read_bytes() == (reference / ckpt.WEIGHTS).read_bytes()
    got, want = metrics_without_timing(run), metrics_without_timing(reference)
    assert [r["epoch"] for r in got] == [1, 2, 3]
    assert got == want


def test_sigkill_at_varied_moments_then_resume_is_bitwise_exact(data: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    kill_at(train_args(data, out), "step:7", tmp_path)  # mid-epoch 1, inside step 7 (checkpoint 5 exists)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["ckpt-000000005.pt"]
    kill_at(resume_args(out), "eval:1", tmp_path)  # during epoch 1's evaluation
    assert ckpt.latest_checkpoint(out).name == "ckpt-000000010.pt"  # type: ignore[union-attr]
    kill_at(resume_args(out), "metrics:1", tmp_path)  # epoch 1's row written, its checkpoint not yet
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    kill_at(resume_args(out), "ckpt:2", tmp_path)  # right after checkpoints 12 and 15 are on disk
    assert ckpt.latest_checkpoint(out).name == "ckpt-000000015.pt"  # type: ignore[union-attr]
    r = finish(resume_args(out))
    assert "resumed from" in r.stdout and "ckpt-000000015.pt" in r.stdout
    assert_same_run(out, reference)
    # the newest K (= 2) checkpoints are kept, and no temporary file is left behind
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["ckpt-000000035.pt", "ckpt-000000036.pt"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-000000035.pt", "ckpt-000000036.pt"]


def _stop_with(sig: int, args: list[str], pause_at: str, tmp: Path) -> tuple[int, str, float]:
    marker = tmp / "marker"
    p = launch(args, pause_at, marker)
    wait_for(marker, p)
    t0 = time.time()
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    return p.returncode, err, time.time() - t0


def test_sigterm_and_sigint_checkpoint_print_resume_command_and_resume_exactly(data: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # SIGTERM arrives inside step 9: the step finishes, checkpoint 9 is written, exit 143.
    rc, err, dt = _stop_with(signal.SIGTERM, train_args(data, out), "step-signal:9", tmp_path)
    assert rc == 143, err[-2000:]
    assert dt < 20
    path = out / "checkpoints" / "ckpt-000000009.pt"
    assert path.is_file()
    assert f"checkpoint written to {path}" in err
    assert "resume with:" in err and f"-m alexnet train --out {out} --resume" in err
    assert "Traceback" not in err
    state = ckpt.load_checkpoint(path)["run"]
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (9, 0, 9)

    # SIGINT during the evaluation of epoch 1: abandoned, checkpointed before it, exit 130.
    rc, err, dt = _stop_with(signal.SIGINT, resume_args(out), "eval:1", tmp_path)
    assert rc == 130, err[-2000:]
    assert dt < 20
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))["run"]  # type: ignore[arg-type]
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (12, 0, 12)
    assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip()

    # The resume command it printed, run as printed, finishes the run exactly.
    cmd = err.split("resume with:")[1].strip().splitlines()[0].split()
    assert cmd[1:4] == ["-m", "alexnet", "train"]
    finish(cmd[3:] + ["--workers", "0"])
    assert_same_run(out, reference)


def test_lars_stopped_mid_epoch_then_resumed_is_bitwise_exact(data: Path, tmp_path: Path) -> None:
    # LARS keeps a velocity per parameter, as §5's rule does; the global rate follows a warm-up and
    # the poly decay, so a resume that lost the velocity or the schedule's position shows at once.
    lars = ["--epochs", "2", "--set", "optimizer=lars", "--set", "lr=2.0", "--set", "schedule=poly",
            "--set", "warmup_epochs=0.5"]
    ref, out = tmp_path / "reference", tmp_path / "run"
    finish(train_args(data, ref) + lars)
    rc, err, _ = _stop_with(signal.SIGTERM, train_args(data, out) + lars, "step-signal:9", tmp_path)
    assert rc == 143, err[-2000:]
    state = ckpt.load_checkpoint(out / "checkpoints" / "ckpt-000000009.pt")
    assert state["config"]["optimizer"] == "lars" and state["optimizer"]["state"]  # the velocities are saved
    finish(resume_args(out))
    assert (out / ckpt.WEIGHTS).read_bytes() == (ref / ckpt.WEIGHTS).read_bytes()
    assert metrics_without_timing(out) == metrics_without_timing(ref)
