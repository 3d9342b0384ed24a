"""torchrun on the CPU (gloo): two processes, on one node or as two c10d "nodes" on localhost,
against one with the same global batch; every val image counted once; a SIGTERM under torchrun
checkpoints every rank's RNG and resumes exactly; ``--max-restarts`` after a rank is killed resumes
exactly; a run continued at another world size sees the same samples in the same order; the
processes must agree on the config; the bf16 gradient-compression hook."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet.data.sources import synthetic
from alexnet.data.writer import write_arrays
from alexnet.engine import checkpoint as ckpt
from alexnet.engine.run_folder import ELASTIC_RUN_ID, TIMING_FIELDS
from launch_hooks import STOP_FLAG_HOOK

TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")

# Runs `alexnet` with test hooks around each training step (the numbers are the engine's own):
# PAUSE_STEP=n: rank 0 waits inside its nth step until a signal has arrived (see tests/test_resume.py);
# KILL_STEP=n: rank 1 SIGKILLs itself at the start of its nth step, on torchrun's first attempt only;
# INDEX_LOG=P: each rank appends [epoch, sample indices] of every step it trained to P-RANK.
LAUNCHER = STOP_FLAG_HOOK + r"""
import json, os, signal, sys, time
from pathlib import Path
from alexnet.engine.fast_step import FastStep

env = os.environ
pause, kill = int(env.get("PAUSE_STEP", 0)), int(env.get("KILL_STEP", 0))
log = env.get("INDEX_LOG")
calls = {"n": 0}
orig_step = FastStep.__call__

def step_fn(self, images, labels, indices, epoch):
    calls["n"] += 1
    n, rank = calls["n"], int(env.get("RANK", 0))
    if n == kill and rank == 1 and env.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    if n == pause:
        if rank == 0:
            Path(env["PAUSE_MARKER"]).write_text("paused")
        t0 = time.time()
        while not (stops and stops[-1].signum) and time.time() - t0 < 60:
            time.sleep(0.01)
    out = orig_step(self, images, labels, indices, epoch)
    if log:
        with open(f"{log}-{rank}", "a") as f:
            f.write(json.dumps([epoch, indices.tolist()]) + "\n")
    return out

FastStep.__call__ = step_fn
from alexnet.cli import main
sys.exit(main(sys.argv[1:]))
"""
DROPOUT = ("--model-opt", "dropout=0.5", "--save-every", "2")


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


def env(**extra: str) -> dict[str, str]:
    # one thread per process: the 2 processes share 2 cores; fixed, so results are reproducible
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", *args]


def show(out: str, err: str) -> None:  # shown under "Captured stdout" (an assertion message would be cut short)
    print("STDOUT:", out[-3000:], "\nSTDERR:", err[-8000:])


def run_ok(cmd: list[str], extra_env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env(**(extra_env or {})), **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        show(r.stdout, r.stderr)
    assert r.returncode == 0
    return r


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def strip(rs: list[dict]) -> list[dict]:
    return [{k: v for k, v in x.items() if k not in TIMING_FIELDS} for x in rs]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_weights(run / ckpt.WEIGHTS)[0]  # the state_dict, without the data statistics


def assert_close_to(a_run: Path, b_run: Path, tol: float = 1e-5) -> None:
    """Weights within ``tol`` (the fp32 rounding noise of a different all-reduce order, see
    train_args) and the per-epoch numbers as close; the runs did move away from epoch 1's end."""
    a, b = weights(a_run), weights(b_run)
    init = torch.load(ckpt.list_checkpoints(b_run)[0], weights_only=True)["model"]
    for k in a:
        assert float((a[k] - b[k]).abs().max()) <= tol, k
    assert any(float((a[k] - init[k]).abs().max()) > 1e-3 for k in a)
    for ra, rb in zip(rows(a_run), rows(b_run), strict=True):
        assert rb["val_images"] == ra["val_images"] == 25  # each val image exactly once
        assert rb["train_images"] == ra["train_images"] == 192
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-4
        assert abs(ra["val_top1_err"] - rb["val_top1_err"]) <= 1 / 25 + 1e-9


def global_batches(log: Path, world: int) -> list[tuple[int, list[int]]]:
    """The (epoch, sample indices) of each step from an INDEX_LOG: the ranks' slices in rank order."""
    per_rank = [[json.loads(line) for line in Path(f"{log}-{r}").read_text().splitlines()] for r in range(world)]
    assert len({len(x) for x in per_rank}) == 1, [len(x) for x in per_rank]
    return [(steps[0][0], [i for s in steps for i in s[1]]) for steps in zip(*per_rank)]


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("launcher") / "launcher.py"
    p.write_text(LAUNCHER)
    return p


@pytest.fixture(scope="module")
def one(data: Path, launcher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, uninterrupted; the samples of each step in RUN/../indices-0."""
    out = tmp_path_factory.mktemp("one") / "run"
    run_ok([sys.executable, str(launcher), *train_args(data, out)], {"INDEX_LOG": str(out.parent / "indices")})
    return out


@pytest.fixture(scope="module")
def two_dropout(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two processes with dropout, uninterrupted, checkpoints every 2 steps."""
    out = tmp_path_factory.mktemp("two-dropout") / "run"
    run_ok(torchrun("-m", "alexnet", *train_args(data, out, *DROPOUT)))
    return out


def stop_after(cmd: list[str], step: int, tmp_path: Path, **extra_env: str) -> tuple[str, str]:
    """Run ``cmd`` through the launcher, SIGTERM it inside its ``step``-th step (counted from where
    it started), wait for the clean stop; its (stdout, stderr)."""
    marker = tmp_path / f"marker-{time.monotonic_ns()}"
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env(PAUSE_STEP=str(step), PAUSE_MARKER=str(marker), **extra_env))
    t0 = time.time()
    while not marker.exists():
        if p.poll() is not None or time.time() - t0 > 120:
            p.kill()
            show(*p.communicate())
            pytest.fail("pause point not reached")
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)  # torchrun forwards it to every worker
    out, err = p.communicate(timeout=90)
    if "stopped by SIGTERM: checkpoint written to" not in err:
        show(out, err)
    assert p.returncode != 0 and "stopped by SIGTERM: checkpoint written to" in err  # torchrun exits 1, alexnet 143
    return out, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_nodes(*node_args: list[str]) -> list[tuple[int, str, str]]:
    """Two torchrun agents of one process each, as two "nodes" meeting by c10d rendezvous on
    localhost (gloo); node i runs ``alexnet`` with ``node_args[i]``; their (exit code, stdout, stderr)."""
    port = free_port()
    rdzv = ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
            f"--rdzv_id=test-{port}"]
    procs = [subprocess.Popen([str(TORCHRUN), *rdzv, "-m", "alexnet", *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env()) for a in node_args]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append((p.returncode, out, err))
    return results


# -- tests ------------------------------------------------------------------------------------------


def test_two_processes_equal_one_with_the_same_global_batch(data: Path, one: Path, tmp_path: Path) -> None:
    # alexnet-cifar has no dropout by default: the two runs draw no random masks, so they differ
    # only in the order of float additions (the gradient all-reduce).
    two = tmp_path / "two"
    r = run_ok(torchrun("-m", "alexnet", *train_args(data, two)))
    assert "(2 processes)" in r.stdout
    assert_close_to(one, two)
    # only rank 0 wrote: one metrics row per epoch, one config
    assert len(rows(two)) == 2 and (two / "config.yaml").is_file()


@pytest.mark.slow
def test_two_nodes_by_c10d_rendezvous_equal_one_and_must_agree_on_the_config(data: Path, one: Path, tmp_path: Path) -> None:
    two = tmp_path / "two"
    results = two_nodes(train_args(data, two), train_args(data, two))
    for rc, out, err in results:
        if rc != 0:
            show(out, err)
        assert rc == 0
    assert any("(2 processes)" in out for _, out, _ in results)  # rank 0's log, on whichever node it landed
    assert_close_to(one, two)

    # --resume on two nodes whose copies of RUN/config.yaml differ (no shared storage): refused by
    # every process with the same line naming the field, before anything is read or written.
    other = tmp_path / "other"
    shutil.copytree(two, other)
    (other / "config.yaml").write_text((other / "config.yaml").read_text().replace("lr: 0.005", "lr: 0.006"))
    before = sorted(p.name for p in (two / "checkpoints").iterdir()), (two / "metrics.jsonl").read_bytes()
    resume = ["train", "--resume", "--epochs", "3", "--out"]
    results = two_nodes(resume + [str(two)], resume + [str(other)])
    for rc, out, err in results:
        assert rc != 0
        errors = [line for line in err.splitlines() if line.startswith("alexnet train: error:")]
        assert len(errors) == 1, err[-3000:]
        assert "the processes do not agree on the config: rank 1 has lr=0.00" in errors[0], errors[0]
        assert "exitcode  : 2" in err  # torchrun's report of the worker's exit status
    assert (sorted(p.name for p in (two / "checkpoints").iterdir()), (two / "metrics.jsonl").read_bytes()) == before


def test_sigterm_under_torchrun_then_resume_is_exact_with_dropout(data: Path, two_dropout: Path, launcher: Path,
                                                                  tmp_path: Path) -> None:
    run = tmp_path / "run"
    _, err = stop_after(torchrun(str(launcher), *train_args(data, run, *DROPOUT)), 9, tmp_path)
    last = ckpt.latest_checkpoint(run)
    assert last is not None and last.name == "ckpt-000000009.pt", err[-3000:]  # step 9 finished, then the checkpoint
    d = ckpt.load_checkpoint(last)
    assert d["rng"]["world_size"] == 2 and len(d["rng"]["ranks"]) == 2
    assert not torch.equal(d["rng"]["ranks"][0]["torch"], d["rng"]["ranks"][1]["torch"])  # a stream per rank
    assert "resume with: torchrun --standalone --nproc_per_node=2 -m alexnet train" in err

    r = run_ok(torchrun("-m", "alexnet", "train", "--out", str(run), "--resume"))
    assert "resumed from" in r.stdout
    assert (run / ckpt.WEIGHTS).read_bytes() == (two_dropout / ckpt.WEIGHTS).read_bytes()
    assert strip(rows(run)) == strip(rows(two_dropout))


@pytest.mark.slow
def test_max_restarts_after_a_killed_rank_resumes_from_the_last_checkpoint_exactly(
        data: Path, two_dropout: Path, launcher: Path, tmp_path: Path) -> None:
    # Rank 1 is SIGKILLed at the start of step 9 (the last checkpoint is step 8's): rank 0's gloo
    # all-reduce fails, torchrun's agent stops every worker and starts them again
    # (TORCHELASTIC_RESTART_COUNT=1), and the same command resumes from step 8: the result is the
    # uninterrupted run's, bit for bit (same world size: every rank's RNG state is restored).
    run = tmp_path / "run"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "--max-restarts=1", str(launcher), *train_args(data, run, *DROPOUT)]
    r = run_ok(cmd, {"KILL_STEP": "9"})
    assert "torchrun restarted the workers (restart 1)" in r.stdout
    assert "resumed from" in r.stdout and "ckpt-000000008.pt" in r.stdout
    assert (run / ckpt.WEIGHTS).read_bytes() == (two_dropout / ckpt.WEIGHTS).read_bytes()
    assert strip(rows(run)) == strip(rows(two_dropout))


@pytest.mark.slow
def test_a_restart_never_takes_over_a_run_this_job_did_not_start(one: Path, tmp_path: Path) -> None:
    # The command forgot --resume, so it refuses the folder (exit 2); torchrun restarts it; the
    # restarted command must not "resume" a run that another job started.
    run = tmp_path / "run"
    shutil.copytree(one, run)
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = subprocess.run(torchrun("--max-restarts=1", "-m", "alexnet", "train", "--out", str(run), "--epochs", "3", nproc=1),
                       capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode != 0
    assert r.stderr.count("already holds a run") == 2, r.stderr[-3000:]  # the first attempt and the restart
    assert not (run / ELASTIC_RUN_ID).exists()
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_resume_at_another_world_size_sees_the_same_samples(data: Path, one: Path, launcher: Path, tmp_path: Path) -> None:
    # 2 processes for 4 steps, 1 process for 5 more (across the end of epoch 1), 2 processes to the
    # end: the same global batches, bit for bit, as one uninterrupted process, and the same weights
    # within the rounding noise of a different all-reduce order (see train_args).
    run, log = tmp_path / "run", tmp_path / "indices"
    stop_after(torchrun(str(launcher), *train_args(data, run)), 4, tmp_path, INDEX_LOG=f"{log}-a")
    assert ckpt.latest_checkpoint(run).name == "ckpt-000000004.pt"  # type: ignore[union-attr]
    out, _ = stop_after([sys.executable, str(launcher), "train", "--out", str(run), "--resume"], 5, tmp_path,
                        INDEX_LOG=f"{log}-b")
    assert "resuming a checkpoint of 2 process(es) with 1: the same samples" in out
    assert ckpt.latest_checkpoint(run).name == "ckpt-000000009.pt"  # type: ignore[union-attr]
    r = run_ok(torchrun(str(launcher), "train", "--out", str(run), "--resume"), {"INDEX_LOG": f"{log}-c"})
    assert "resuming a checkpoint of 1 process(es) with 2" in r.stdout

    segments = [global_batches(Path(f"{log}-{x}"), w) for x, w in (("a", 2), ("b", 1), ("c", 2))]
    assert [len(s) for s in segments] == [4, 5, 3]
    assert sum(segments, []) == global_batches(one.parent / "indices", 1)
    assert_close_to(one, run)

    # another global batch would skip or repeat samples: refused in one line
    bad = subprocess.run([sys.executable, "-m", "alexnet", "train", "--out", str(run), "--resume", "--epochs", "3",
                          "--batch-size", "16"], capture_output=True, text=True, timeout=120, env=env())
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"alexnet train: error: {ckpt.latest_checkpoint(run)}: written with a global batch of 32; resume it with "
        f"--batch-size 32 (now 16), on any number of processes that divides it"]


@pytest.mark.slow
def test_bf16_gradient_compression_hook_is_registered_and_trains(data: Path, one: Path, tmp_path: Path) -> None:
    # gloo all-reduces bf16 tensors (torch 2.x), so the hook really runs here, as it would on NCCL.
    run = tmp_path / "run"
    r = run_ok(torchrun("-m", "alexnet", *train_args(data, run, "--set", "ddp_comm_hook=bf16")))
    assert "gradient all-reduce in bf16 (bf16_compress_hook)" in r.stdout
    a, b = weights(one), weights(run)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    # the gradients were rounded to bf16 (8 significant bits): far above fp32's ~3e-8, still close
    print(f"bf16 hook, 2 processes, against fp32, 1 process: max |weight difference| {diff:.2e}")
    assert 1e-6 < diff < 1e-3, diff
    assert abs(rows(one)[-1]["train_loss"] - rows(run)[-1]["train_loss"]) < 0.01


def test_per_step_tensorboard_scalars_come_from_rank_0_only(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    two = tmp_path / "two"
    run_ok(torchrun("-m", "alexnet", *train_args(data, two, "--tensorboard", "--set", "tensorboard_every=2")))
    assert len(list((two / "tb" / "steps").glob("events.out.tfevents.*"))) == 1  # one writer: rank 0's
    acc = EventAccumulator(str(two / "tb" / "steps"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("step/train_loss")] == [2, 4, 6, 8, 10, 12]  # 6 global batches an epoch
    assert all(e.value > 0 for e in acc.Scalars("step/img_per_s"))
