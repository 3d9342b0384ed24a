"""torchrun on the CPU (gloo): two processes against one with the same global batch; every val
image counted once; a SIGTERM under torchrun checkpoints every rank's RNG and resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet.data.format import write_arrays
from alexnet.data.sources import synthetic
from alexnet.engine import checkpoint as ckpt
from alexnet.engine.train import TIMING_FIELDS

TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")

# Pauses rank 0 inside its nth training step until a signal has arrived (see tests/test_resume.py).
LAUNCHER = r"""
import os, sys, time
from pathlib import Path
import alexnet.engine.train as T

nth = int(os.environ["PAUSE_STEP"])
marker = Path(os.environ["PAUSE_MARKER"])
calls = {"n": 0}
orig_step = T.train_step

def train_step(ctx, *a, **k):
    calls["n"] += 1
    if calls["n"] == nth:
        if ctx.dist.rank == 0:
            marker.write_text("paused")
        t0 = time.time()
        while not ctx.stop_signal and time.time() - t0 < 60:
            time.sleep(0.01)
    return orig_step(ctx, *a, **k)

T.train_step = train_step
from alexnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 25 val images: not divisible by 2 processes (13 + 12, no padding, no duplicates).
    train = synthetic.generate(192, 36, 0, split="train")
    val = synthetic.generate(25, 36, 0, split="val")
    return write_arrays(tmp_path_factory.mktemp("ddp") / "ds", {"train": train, "val": val}, classes=synthetic.CLASS_NAMES)


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    # Global batch 32 = 2 × 16; 6 steps an epoch. lr 0.005, not the cifar recipe's 0.02: at 0.02 the
    # first steps of this tiny run spike (loss 2.3 -> 3.1), and a spiking run amplifies any fp32
    # rounding difference (here the order of the gradient all-reduce's additions, ~1e-8) by 10^3-10^4
    # within a dozen steps, through ReLU and max-pool decisions that flip; a single process run with 1
    # and then 2 threads differs by as much. At a stable rate the two agree to ~3e-8, and any real
    # fault (a wrong slice, a wrong average, a missed step) shows at 1e-3 and above.
    return ["train", "--data", str(data), "--model", "alexnet-cifar", "--out", str(out), "--epochs", "2", "--batch-size",
            "32", "--workers", "0", "--no-progress", "--device", "cpu", "--seed", "5", "--lr", "0.005", *extra]


def env() -> dict[str, str]:
    # one thread per process: the 2 processes share 2 cores; fixed, so results are reproducible
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str) -> list[str]:
    return [str(TORCHRUN), "--standalone", "--nproc_per_node=2", *args]


def run_ok(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env(), **kw)  # type: ignore[call-overload]
    if r.returncode != 0:  # shown under "Captured stdout" (an assertion message would be cut short)
        print("STDOUT:", r.stdout[-3000:], "\nSTDERR:", r.stderr[-8000:])
    assert r.returncode == 0
    return r


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_with_the_same_global_batch(data: Path, tmp_path: Path) -> None:
    # alexnet-cifar has no dropout by default: the two runs draw no random masks, so they differ
    # only in the order of float additions (the gradient all-reduce).
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok([sys.executable, "-m", "alexnet", *train_args(data, one)])
    r = run_ok(torchrun("-m", "alexnet", *train_args(data, two)))
    assert "(2 processes)" in r.stdout
    a, _ = ckpt.load_weights(one / ckpt.WEIGHTS)  # the state_dict, without the data statistics
    b, _ = ckpt.load_weights(two / ckpt.WEIGHTS)
    init = torch.load(ckpt.list_checkpoints(two)[0], weights_only=True)["model"]  # epoch 1's end
    for k in a:
        assert float((a[k] - b[k]).abs().max()) <= 1e-5, k
    assert any(float((a[k] - init[k]).abs().max()) > 1e-3 for k in a)  # they did move
    for ra, rb in zip(rows(one), rows(two)):
        assert rb["val_images"] == ra["val_images"] == 25  # each val image exactly once
        assert rb["train_images"] == ra["train_images"] == 192
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-4
        assert abs(ra["val_top1_err"] - rb["val_top1_err"]) <= 1 / 25 + 1e-9
    # only rank 0 wrote: one metrics row per epoch, one config
    assert len(rows(two)) == 2 and (two / "config.yaml").is_file()


def test_sigterm_under_torchrun_then_resume_is_exact_with_dropout(data: Path, tmp_path: Path) -> None:
    extra = ("--model-opt", "dropout=0.5", "--save-every", "2")
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_ok(torchrun("-m", "alexnet", *train_args(data, ref, *extra)))

    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    marker = tmp_path / "marker"
    p = subprocess.Popen(torchrun(str(launcher), *train_args(data, run, *extra)), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**env(), "PAUSE_STEP": "9", "PAUSE_MARKER": str(marker)})
    t0 = time.time()
    while not marker.exists():
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.time() - t0 < 120, "pause point not reached"
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
    _, err = p.communicate(timeout=90)
    assert p.returncode != 0
    last = ckpt.latest_checkpoint(run)
    assert last is not None and last.name == "ckpt-000000009.pt", err[-3000:]  # step 9 finished, then the checkpoint
    d = ckpt.load_checkpoint(last)
    assert d["rng"]["world_size"] == 2 and len(d["rng"]["ranks"]) == 2
    assert not torch.equal(d["rng"]["ranks"][0]["torch"], d["rng"]["ranks"][1]["torch"])  # a stream per rank
    assert "resume with: torchrun --standalone --nproc_per_node=2 -m alexnet train" in err

    r = run_ok(torchrun("-m", "alexnet", "train", "--out", str(run), "--resume"))
    assert "resumed from" in r.stdout
    assert (run / ckpt.WEIGHTS).read_bytes() == (ref / ckpt.WEIGHTS).read_bytes()
    strip = lambda rs: [{k: v for k, v in x.items() if k not in TIMING_FIELDS} for x in rs]  # noqa: E731
    assert strip(rows(run)) == strip(rows(ref))

    # a different world size is refused with one line
    bad = subprocess.run([sys.executable, "-m", "alexnet", "train", "--out", str(run), "--resume", "--epochs", "3"],
                         capture_output=True, text=True, timeout=120, env=env())
    assert bad.returncode == 2 and "written by a run of 2 process(es)" in bad.stderr and "Traceback" not in bad.stderr
