"""Faults, with real processes: two writers into one folder, full disks, damaged files of a run and
of a dataset, signals during set-up. Each ends in one clear line and exit 2 (130/143 for signals),
never a traceback, and no good data is lost.

Processes run through a small launcher (like tests/test_resume.py's) that can

* pause at the Nth call of a named function: it writes a marker file and waits until the test
  creates a "continue" file or the process receives a signal (the engine's own handlers run);
* fill the disk: writes to files whose path contains ``FULL_DISK_MATCH`` fail with ENOSPC, as
  the kernel reports a full disk, once ``FULL_DISK_AFTER`` bytes of that file are written.

The wrappers only wait or fail writes; everything else is the unmodified code. Where the test
machine lets us mount a small tmpfs (root), a real full disk is used as well.

Processes are costly on 2 shared cores, so cases that need no process of their own (bad values,
damaged files) run as several commands inside one driver process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.data.format import PreparedDataset, write_arrays
from alexnet.data.sources import synthetic
from alexnet.engine import checkpoint as ckpt
from alexnet.engine.train import TIMING_FIELDS

LAUNCHER = r"""
import builtins, errno, importlib, os, signal, sys, time
from pathlib import Path

# Every handler the program installs also notes the signal, so a pause ends when one arrives.
got = []
_signal = signal.signal
def noting(sig, handler):
    if callable(handler):
        inner = handler
        def handler(s, f, inner=inner):
            got.append(s)
            return inner(s, f)
    return _signal(sig, handler)
signal.signal = noting

spec = os.environ.get("PAUSE_AT", "")
if spec:
    module, attr, nth = spec.rsplit(":", 2)
    marker, cont = Path(os.environ["PAUSE_MARKER"]), Path(os.environ["PAUSE_CONTINUE"])
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for p in path:
        owner = getattr(owner, p)
    orig = getattr(owner, name)
    calls = [0]
    def paused(*a, **k):
        calls[0] += 1
        if calls[0] == int(nth):
            got.clear()
            marker.write_text(str(os.getpid()))
            t0 = time.time()
            while time.time() - t0 < 120 and not cont.exists() and not got:
                time.sleep(0.01)
        return orig(*a, **k)
    setattr(owner, name, paused)

for key, attr in (("PREPARE_CHECKPOINT_SECONDS", "CHECKPOINT_SECONDS"), ("PREPARE_CHUNK", "INLINE_CHUNK")):
    if os.environ.get(key):
        import alexnet.data.prepare as P
        setattr(P, attr, type(getattr(P, attr))(os.environ[key]))

match = os.environ.get("FULL_DISK_MATCH")
if match:
    budget = int(os.environ.get("FULL_DISK_AFTER", "0"))
    class Full:
        def __init__(self, f):
            self._f, self._n = f, 0
        def write(self, b):
            n = len(b) if isinstance(b, str) else memoryview(b).nbytes
            if self._n + n > budget:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._n += n
            return self._f.write(b)
        def __getattr__(self, k):
            return getattr(self._f, k)
        def __enter__(self):
            return self
        def __exit__(self, *a):
            self._f.close()
    def writing(mode):
        return any(c in mode for c in "wax+")
    _open, _fdopen = builtins.open, os.fdopen
    def open_(file, mode="r", *a, **k):
        f = _open(file, mode, *a, **k)
        return Full(f) if writing(mode) and match in str(file) else f
    def fdopen(fd, mode="r", *a, **k):
        f = _fdopen(fd, mode, *a, **k)
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        return Full(f) if writing(mode) and match in path else f
    import io
    builtins.open, io.open, os.fdopen = open_, open_, fdopen

from alexnet.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Runs several commands in one process (each through the command line's main), so that many bad
# inputs cost one interpreter start: prints one JSON object per command.
DRIVER = r"""
import contextlib, io, json, sys, traceback
from alexnet.cli import main
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except BaseException:
            rc, _ = "uncaught", traceback.print_exc()
    print(json.dumps({"argv": argv, "rc": rc, "err": err.getvalue()}), flush=True)
"""


class Proc:
    """A launched command with its pause files."""

    def __init__(self, args: list[str], tmp: Path, *, pause_at: str = "", env: dict[str, str] | None = None) -> None:
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        self.marker, self.cont = tmp / f"paused-{tag}", tmp / f"continue-{tag}"
        full_env = {**os.environ, "PAUSE_AT": pause_at, "PAUSE_MARKER": str(self.marker),
                    "PAUSE_CONTINUE": str(self.cont), **(env or {})}
        self.p = subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], env=full_env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)

    def wait_paused(self, timeout: float = 240) -> None:
        t0 = time.time()
        while not self.marker.exists():
            if self.p.poll() is not None:
                out, err = self.p.communicate()
                raise AssertionError(f"ended (rc {self.p.returncode}) before the pause:\n{out[-1500:]}\n{err[-2500:]}")
            assert time.time() - t0 < timeout, "pause point not reached"
            time.sleep(0.02)

    def resume(self) -> None:
        self.cont.write_text("go")

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        out, err = self.p.communicate(timeout=timeout)
        return self.p.returncode, out, err


def cli(args: list[str], *, env: dict[str, str] | None = None, tmp: Path | None = None) -> tuple[int, str, str]:
    """One command in its own process (through the launcher, for ENOSPC injection)."""
    p = Proc(args, tmp or Path(os.devnull).parent, env=env)
    return p.finish()


def drive(cases: list[list[str]]) -> list[dict]:
    r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def one_line(err: str, rc: int | str, *, code: int = 2) -> str:
    """The single line of a refusal (asserting there is exactly one, no traceback, the exit code)."""
    assert rc == code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


# -- data ------------------------------------------------------------------------------------------


def image_tree(root: Path, per_class: int = 8, val_per_class: int = 2, size: int = 40) -> Path:
    """train/{c0,c1}/ and val/{c0,c1}/ of small PNGs (prepared raw, at their native size)."""
    g = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in ("c0", "c1"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_tree(tmp_path_factory.mktemp("faults") / "tree")


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.build(tmp_path_factory.mktemp("faults") / "ds", size=36, train_per_class=4, val_per_class=2)


def train_args(data: Path, out: Path, epochs: int = 2) -> list[str]:
    # lenet5: 40 images / 8 = 5 steps an epoch; checkpoints at steps 2, 4, 5, 6, 8, 10 (all kept)
    return ["train", "--data", str(data), "--model", "lenet5", "--out", str(out), "--epochs", str(epochs),
            "--batch-size", "8", "--save-every", "2", "--keep", "0", "--workers", "0", "--no-progress"]


def resume_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--resume", "--workers", "0", "--no-progress", *extra]


@pytest.fixture(scope="module")
def run(ds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run: the reference every damaged or interrupted copy is compared with."""
    out = tmp_path_factory.mktemp("faults") / "run"
    rc, _, err = cli(train_args(ds, out))
    assert rc == 0, err[-3000:]
    return out


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1, 2: concurrent writers ----------------------------------------------------------------------


def test_second_prepare_into_the_same_out_is_refused_and_the_first_commits_intact(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "cc"
    a = Proc(["prepare", str(tree), "--out", str(out), "--workers", "1", "--quiet"], tmp_path,
             pause_at="alexnet.data.format:SplitWriter.add:3")
    a.wait_paused()  # A is writing train/data.bin
    rc, _, err = cli(["prepare", str(tree), "--out", str(out), "--workers", "1", "--quality", "50", "--quiet",
                      "--encoding", "jpeg"])
    line = one_line(err, rc)
    assert f"{out}: in use by another alexnet process (pid {a.p.pid})" in line
    assert (Path(str(out) + ".partial") / "train" / "data.bin").is_file()  # B deleted nothing of A's
    a.resume()
    rc, _, err = a.finish()
    assert rc == 0, err[-2000:]
    for split, n in (("train", 16), ("val", 4)):
        d = PreparedDataset(out, split)
        assert len(d) == n and d.encoding == "raw"
        d.read_batch(range(n))  # every record readable
    assert not list(tmp_path.glob(".cc.lock"))  # the lock file goes with its holder


def test_second_train_and_second_resume_into_a_live_run_are_refused(ds: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    a = Proc(train_args(ds, out, epochs=1), tmp_path, pause_at="alexnet.engine.train:train_step:3")
    a.wait_paused()  # first epoch, before any metrics row or checkpoint (the old guard saw nothing)
    for args in (train_args(ds, out, epochs=1), resume_args(out)):
        rc, _, err = cli(args)
        assert f"{out}: in use by another alexnet process (pid {a.p.pid})" in one_line(err, rc)
    a.resume()
    rc, out_text, err = a.finish()
    assert rc == 0, err[-2000:]
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert (out / ckpt.WEIGHTS).is_file() and not (out / ".lock").exists()


def test_commit_checks_every_split_against_its_index(tmp_path: Path) -> None:
    from alexnet.data.format import DatasetError, DatasetWriter, StatsAccumulator

    out = tmp_path / "d"
    dw = DatasetWriter(out, ["a"])
    w = dw.split("train", "raw", (2, 2))
    for _ in range(3):
        w.add(bytes(12), 0)
    dw.close_split("train")
    acc = StatsAccumulator((2, 2))
    acc.add(np.zeros((2, 2, 3), np.uint8))
    dw.write_stats(*acc.finish())
    with open(dw.tmp / "train" / "data.bin", "r+b") as f:  # what a second writer did to it
        f.truncate(20)
    with pytest.raises(DatasetError, match=r"data.bin: 20 bytes, but its index of 3 records ends at byte 36"):
        dw.commit()
    assert not out.exists()


def test_lock_is_exclusive_between_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    from alexnet.files import BusyError, ExclusiveLock

    code = ("import sys, time; from alexnet.files import ExclusiveLock; l = ExclusiveLock(sys.argv[1], 'X'); "
            "print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "x.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"  # type: ignore[union-attr]
        with pytest.raises(BusyError, match=rf"X: in use by another alexnet process \(pid {p.pid}\)"):
            ExclusiveLock(tmp_path / "x.lock", "X")
    finally:
        p.kill()
        p.wait()
    with ExclusiveLock(tmp_path / "x.lock", "X"):  # SIGKILL released it; the stale file does not block
        pass
    assert not (tmp_path / "x.lock").exists()


# -- 6: full disks ----------------------------------------------------------------------------------


def test_full_disk_mid_checkpoint_keeps_the_previous_one_and_resumes_exactly(ds: Path, run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # torch.save reports the failed write as a RuntimeError; the user still reads the disk's error.
    rc, _, err = cli(train_args(ds, out), env={"FULL_DISK_MATCH": "ckpt-000000006", "FULL_DISK_AFTER": "100000"})
    line = one_line(err, rc)
    prev = out / "checkpoints" / "ckpt-000000005.pt"
    assert f"ckpt-000000006.pt: No space left on device; the previous checkpoint {prev} is intact" in line
    assert f"free space, then resume with: " in line and f"--out {out} --resume" in line
    assert [p.name for p in (out / "checkpoints").iterdir()] and sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "ckpt-000000002.pt", "ckpt-000000004.pt", "ckpt-000000005.pt"]  # no torn file, no temporary
    rc, _, err = cli(resume_args(out))
    assert rc == 0, err[-2000:]
    assert (out / ckpt.WEIGHTS).read_bytes() == (run / ckpt.WEIGHTS).read_bytes()


def test_full_disk_at_the_final_weights_then_resume_writes_them(ds: Path, run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc, _, err = cli(train_args(ds, out), env={"FULL_DISK_MATCH": "model.safetensors", "FULL_DISK_AFTER": "1000"})
    line = one_line(err, rc)
    assert line.startswith(f"alexnet train: error: {out / ckpt.WEIGHTS}: No space left on device; the last checkpoint "
                           f"{out / 'checkpoints' / 'ckpt-000000010.pt'} is intact; free space, then resume with:")
    assert not (out / ckpt.WEIGHTS).exists() and not list(out.glob(".*.tmp"))
    rc, stdout, err = cli(resume_args(out))
    assert rc == 0, err[-2000:]
    assert "nan" not in stdout and "done: 2 epochs" in stdout  # the last epoch's numbers, not "val top-1 nan"
    assert (out / ckpt.WEIGHTS).read_bytes() == (run / ckpt.WEIGHTS).read_bytes()
    final = [{k: v for k, v in json.loads((r / "summary.json").read_text())["final"].items() if k not in TIMING_FIELDS}
             for r in (out, run)]
    assert final[0] == final[1]


def tree_pixels(tree: Path, split: str) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted((tree / split).rglob("*.png"))])


def test_full_disk_during_prepare_cuts_back_to_the_checkpoint_and_resumes(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "cc"
    args = ["prepare", str(tree), "--out", str(out), "--workers", "1", "--quiet"]
    every_chunk = {"PREPARE_CHECKPOINT_SECONDS": "0", "PREPARE_CHUNK": "4"}  # a checkpoint every 4 images
    record = 40 * 40 * 3
    rc, _, err = cli(args, env={**every_chunk, "FULL_DISK_MATCH": "data.bin", "FULL_DISK_AFTER": str(6 * record + 100)})
    line = one_line(err, rc)
    partial = Path(str(out) + ".partial")
    assert (f"{partial}: No space left on device; the 4 images prepared up to the last checkpoint are kept in {partial}: "
            f"free space, then rerun the same command to resume") in line
    assert (partial / "train" / "data.bin").stat().st_size == 4 * record  # what was written since is freed
    rc, _, err = cli(args, env=every_chunk)
    assert rc == 0, err[-2000:]
    for split in ("train", "val"):
        d = PreparedDataset(out, split)
        got = d.read_batch(range(len(d))).permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(got, tree_pixels(tree, split))


def test_whole_files_are_replaced_atomically_with_the_usual_permissions(ds: Path, run: Path, tmp_path: Path) -> None:
    # A full disk while config.yaml is rewritten (a resume that trains longer) leaves the old one.
    out = copy_run(run, tmp_path / "run")
    before = (out / "config.yaml").read_bytes()
    rc, _, err = cli(resume_args(out, "--epochs", "3"), env={"FULL_DISK_MATCH": "config.yaml", "FULL_DISK_AFTER": "10"})
    assert "config.yaml: No space left on device" in one_line(err, rc)
    assert (out / "config.yaml").read_bytes() == before
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    # Every file of a dataset and a run gets what a plain open() gives (0666 minus the umask).
    mask = os.umask(0)
    os.umask(mask)
    files = [*ds.rglob("*"), *run.rglob("*")]
    modes = {str(p): stat.S_IMODE(p.stat().st_mode) for p in files if p.is_file()}
    assert modes and set(modes.values()) == {0o666 & ~mask}, modes
