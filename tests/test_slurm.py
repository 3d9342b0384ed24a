"""``alexnet slurm``: the batch script it writes, run by bash with real processes on this machine.

No SLURM here: ``srun`` and ``scontrol`` are small fakes on PATH. ``scontrol show hostnames``
names 127.0.0.1 (the rendezvous host); ``scontrol requeue`` records its arguments; ``srun`` runs
its command as the one task of the step, and passes SIGUSR1 on either to that task only (torchrun's
agent, FAKE_SRUN=task) or to every process of the step (FAKE_SRUN=step: the agent, the workers,
which torchrun starts in sessions of their own, and the loader's worker processes, as SLURM's
process tracking does). The test sends SIGUSR1 to the batch
shell, as ``--signal=B:USR1@SECONDS`` does; the training runs under torchrun with two processes
(gloo, CPU), is stopped inside a chosen step (a sitecustomize.py on PYTHONPATH pauses rank 0 there
until the signal has arrived; the numbers are the engine's own), checkpoints, the script requeues
the job, and running the same script again (the requeued job) finishes the run with the same
weights, bit for bit, as the script run uninterrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import NoReturn

import pytest

from alexnet.cli import main
from alexnet.data.sources import synthetic
from alexnet.data.writer import write_arrays
from alexnet.engine import checkpoint as ckpt
from alexnet.engine.slurm import time_limit_s
from launch_hooks import STOP_FLAG_HOOK

SRC = Path(__file__).resolve().parents[1] / "src"
JOB_ID = "4242"

FAKE_SRUN = r"""#!/bin/bash
# srun [--options] CMD...: the step's one task. FAKE_SRUN=step: a signal reaches every process of the
# step, as SLURM's process tracking (cgroups) does; here, every process that inherited FAKE_STEP.
while [ $# -gt 0 ]; do case "$1" in --*) shift;; *) break;; esac; done
if [ "${FAKE_SRUN:-task}" = task ]; then exec "$@"; fi
step="$$-$RANDOM"
FAKE_STEP="$step" "$@" &
child=$!
signal_step() {
  for e in /proc/[0-9]*/environ; do
    grep -qzx "FAKE_STEP=$step" "$e" 2>/dev/null || continue
    p=${e#/proc/}; kill -USR1 "${p%/environ}" 2>/dev/null
  done
}
while :; do again=; trap 'again=1; signal_step' USR1; wait $child; rc=$?; [ -n "$again" ] || break; done
exit $rc
"""

FAKE_SCONTROL = r"""#!/bin/bash
case "$1" in
  show) echo 127.0.0.1 ;;
  requeue) echo "$*" >> "$SCONTROL_LOG" ;;
  *) echo "fake scontrol: $*" >&2; exit 1 ;;
esac
"""

# PAUSE_STEP=n: rank 0 waits inside its nth training step until its stop request has seen a signal.
PAUSE_HOOK = STOP_FLAG_HOOK + r"""
import time
from pathlib import Path
from alexnet.engine.fast_step import FastStep

_calls = {"n": 0}
_orig_step = FastStep.__call__

def _step(self, *a, **k):
    _calls["n"] += 1
    if _calls["n"] == int(os.environ["PAUSE_STEP"]) and os.environ.get("RANK") == "0":
        Path(os.environ["PAUSE_MARKER"]).write_text("paused")
        t0 = time.time()
        while not (stops and stops[-1].signum) and time.time() - t0 < 60:
            time.sleep(0.01)
    return _orig_step(self, *a, **k)

FastStep.__call__ = _step
"""
# Every torchrun worker of a job that is still running after HANG_DUMP_S seconds writes every thread's
# stack to its stderr (once): a job that hangs says where, in the test's failure report.
HANG_DUMP = "import faulthandler\nfaulthandler.dump_traceback_later(float(os.environ.get('HANG_DUMP_S', '150')))\n"
SITECUSTOMIZE = "import os\nif 'LOCAL_RANK' in os.environ:  # torchrun's workers only\n" + textwrap.indent(
    HANG_DUMP + "if os.environ.get('PAUSE_STEP'):\n" + textwrap.indent(PAUSE_HOOK, "    "), "    ")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train = synthetic.generate(192, 36, 0, split="train")
    val = synthetic.generate(25, 36, 0, split="val")
    return write_arrays(tmp_path_factory.mktemp("slurm") / "ds", {"train": train, "val": val}, classes=synthetic.CLASS_NAMES)


@pytest.fixture(scope="module")
def bin_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the fake SLURM commands, the sitecustomize hook)."""
    fake, hook = tmp_path_factory.mktemp("fakebin"), tmp_path_factory.mktemp("hook")
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return fake, hook


def train_args(data: Path, out: Path, workers: int = 0) -> list[str]:
    # As tests/test_distributed.py: global batch 32 = 2 × 16, 6 steps an epoch, 2 epochs.
    return ["train", "--data", str(data), "--model", "alexnet-cifar", "--out", str(out), "--epochs", "2", "--batch-size",
            "32", "--workers", str(workers), "--no-progress", "--device", "cpu", "--seed", "5", "--lr", "0.005",
            "--model-opt", "dropout=0.5", "--save-every", "2"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_script(tmp: Path, args: list[str], name: str) -> Path:
    script = tmp / f"{name}.sbatch"
    rc = main(["slurm", "--nodes", "1", "--gpus-per-node", "2", "--time", "10:00", "--port", str(free_port()),
               "--script", str(script), "--", *args])
    assert rc == 0 and script.is_file()
    return script


def job_env(bin_dirs: tuple[Path, Path], tmp: Path, **extra: str) -> dict[str, str]:
    fake, hook = bin_dirs
    return {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": JOB_ID,
            "SLURM_JOB_NODELIST": "localhost", "SCONTROL_LOG": str(tmp / "scontrol.log"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(hook), str(SRC), os.environ.get("PYTHONPATH", "")]), **extra}


def abandon_job(p: subprocess.Popen, why: str) -> NoReturn:
    """Fail the test on a job past its time: SIGTERM to the batch shell and every process below it
    (torchrun's workers run in sessions of their own, out of reach of a process-group signal), SIGKILL to
    what is left 30 s later, so that nothing it started goes on running beside the later tests; its
    output (with the ranks' stacks written after HANG_DUMP_S) goes into the failure report."""
    def tree(pid: int) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        return [pid] + [q for c in out for q in tree(int(c))]

    procs = tree(p.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for q in procs:
            try:
                os.kill(q, sig)
            except ProcessLookupError:
                pass
        try:
            out, err = p.communicate(timeout=30)
            break
        except subprocess.TimeoutExpired:
            pass
    else:
        out, err = p.communicate()
    print("STDOUT:", out[-3000:], "\nSTDERR:", err[-20000:])
    pytest.fail(why)


def run_job(script: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    p = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        abandon_job(p, f"the job ran past {timeout:.0f} s (its ranks' stacks, written after HANG_DUMP_S, are above)")
    if p.returncode != 0:
        print("STDOUT:", out[-3000:], "\nSTDERR:", err[-6000:])
    assert p.returncode == 0
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def warn_job_at(script: Path, env: dict[str, str], step: int, tmp: Path) -> tuple[int, str, str]:
    """Run the job, send SIGUSR1 to its batch shell inside rank 0's ``step``-th step; (rc, stdout, stderr)."""
    marker = tmp / f"marker-{time.monotonic_ns()}"
    p = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**env, "PAUSE_STEP": str(step), "PAUSE_MARKER": str(marker)})
    t0 = time.time()
    while not marker.exists():
        if p.poll() is not None or time.time() - t0 > 180:
            abandon_job(p, "pause point not reached")
        time.sleep(0.02)
    p.send_signal(signal.SIGUSR1)  # SLURM's --signal=B:USR1@SECONDS: the batch shell only
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        abandon_job(p, "the warned job did not end within 120 s")
    if p.returncode != 0 or "stopped by SIGUSR1: checkpoint written to" not in err:
        print("STDOUT:", out[-3000:], "\nSTDERR:", err[-6000:])
    return p.returncode, out, err


@pytest.fixture(scope="module")
def reference(data: Path, bin_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job run uninterrupted: it finishes and never asks for a requeue."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "run"
    run_job(write_script(tmp, train_args(data, out), "reference"), job_env(bin_dirs, tmp))
    assert not (tmp / "scontrol.log").exists()
    return out


@pytest.mark.parametrize("delivery, workers", [("task", 0), ("step", 1)])
def test_warning_checkpoints_requeues_and_the_requeued_job_resumes_exactly(
        delivery: str, workers: int, data: Path, bin_dirs: tuple[Path, Path], reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    script = write_script(tmp_path, train_args(data, out, workers), "job")
    env = job_env(bin_dirs, tmp_path, FAKE_SRUN=delivery)
    rc, _, err = warn_job_at(script, env, 5, tmp_path)
    assert rc == 0, err[-3000:]  # the batch shell requeued the job and ended
    assert "stopped by SIGUSR1: checkpoint written to" in err
    assert f"requeueing job {JOB_ID}" in err
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", JOB_ID]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))["run"]  # type: ignore[arg-type]
    assert 5 <= state["step"] < 12  # stopped mid-run, after the step the warning came in
    assert not (out / ckpt.WEIGHTS).exists()

    r = run_job(script, {**env, "SLURM_RESTART_COUNT": "1"})  # the requeued job: the same script again
    assert "resumed from" in r.stdout + r.stderr
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", JOB_ID]  # finished: no second requeue
    assert (out / ckpt.WEIGHTS).read_bytes() == (reference / ckpt.WEIGHTS).read_bytes()


# -- the command itself: what it writes and refuses (no job is run) ----------------------------------


def test_time_limits_are_read_as_sbatch_reads_them() -> None:
    assert [time_limit_s(t) for t in ("90", "90:30", "4:00:00", "2-12", "2-12:30", "1-00:00:10")] == \
        [5400, 5430, 14400, 216000, 217800, 86410]
    assert [time_limit_s(t) for t in ("", "4h", "1:2:3:4", "-5")] == [None] * 4


def test_the_script_asks_for_the_warning_requeue_and_torchrun_on_every_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["slurm", "--nodes", "4", "--gpus-per-node", "8", "--time", "1-00:00:00", "--partition", "gpu",
                 "--cpus-per-gpu", "6", "--sbatch=--constraint=h100", "--", "train", "--out", "runs/big", "--epochs", "3"]) == 0
    script = tmp_path / "runs" / "big.sbatch"
    text = script.read_text()
    assert f"sbatch {script}" in capsys.readouterr().out
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8", "#SBATCH --time=1-00:00:00",
                 "#SBATCH --signal=B:USR1@120", "#SBATCH --requeue", "#SBATCH --cpus-per-task=48", "#SBATCH --partition=gpu",
                 "#SBATCH --constraint=h100", f"#SBATCH --chdir={tmp_path}",
                 "--nnodes=4 --nproc-per-node=8", "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                 "-m alexnet train --out runs/big --epochs 3 $resume &", 'scontrol requeue "$SLURM_JOB_ID"'):
        assert line in text, line
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid bash
    # written again by this command: replaced; a file it did not write: refused
    assert main(["slurm", "--nodes", "2", "--gpus-per-node", "8", "--time", "60", "--", "train", "--out", "runs/big"]) == 0
    assert "--nodes=2" in script.read_text()
    (tmp_path / "mine.sbatch").write_text("#!/bin/bash\necho mine\n")
    assert main(["slurm", "--nodes", "1", "--gpus-per-node", "1", "--time", "60", "--script", "mine.sbatch", "--",
                 "train", "--out", "runs/x"]) == 2
    assert "exists and was not written by this command" in capsys.readouterr().err
    assert (tmp_path / "mine.sbatch").read_text() == "#!/bin/bash\necho mine\n"


def test_a_bad_training_command_is_refused_before_it_waits_in_the_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["slurm", "--nodes", "1", "--gpus-per-node", "1", "--time", "60"]
    cases = [
        (["--", "evaluate", "x"], "give the training command after --"),
        (["--", "train", "--epochs", "3"], "the training command after --: the following arguments are required: --out"),
        (["--", "train", "--out", "r", "--set", "optimizer=adam"], "optimizer='adam' is not valid"),
        (["--", "train", "--out", "r", "--model", "vgg"], "vgg"),
        (["--warning", "3600", "--", "train", "--out", "r"], "--warning 3600: the warning would come before the job starts"),  # 60 = minutes
        (["--time", "4h", "--", "train", "--out", "r"], "--time '4h': not a SLURM time limit"),
    ]
    for extra, message in cases:
        argv = base[:-2] + extra if extra[0] == "--time" else base + extra
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())  # nothing written


def test_submit_hands_the_script_to_sbatch_or_says_it_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["slurm", "--nodes", "1", "--gpus-per-node", "1", "--time", "60", "--submit", "--", "train", "--out", "r"]
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert main(argv) == 2
    assert "--submit: sbatch is not on PATH" in capsys.readouterr().err and (tmp_path / "r.sbatch").is_file()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/called"\necho "Submitted batch job 77"\n')
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert main(argv) == 0
    assert "Submitted batch job 77" in capsys.readouterr().out
    assert (fake / "called").read_text().strip() == str(tmp_path / "r.sbatch")
