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
import re
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

from alexnet.data.format import PreparedDataset
from alexnet.data.sources import synthetic
from alexnet.data.writer import write_arrays
from alexnet.engine import checkpoint as ckpt
from alexnet.engine.run_folder import TIMING_FIELDS

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
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except BaseException:
            rc, _ = "uncaught", traceback.print_exc()
    print(json.dumps({"argv": argv, "rc": rc, "err": err.getvalue(), "out": out.getvalue()}), flush=True)
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
             pause_at="alexnet.data.writer:SplitWriter.add:3")
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
    a = Proc(train_args(ds, out, epochs=1), tmp_path, pause_at="alexnet.engine.fast_step:FastStep.__call__:3")
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
    from alexnet.data.format import DatasetError
    from alexnet.data.stats import StatsAccumulator
    from alexnet.data.writer import DatasetWriter

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


# -- 5: damaged datasets ------------------------------------------------------------------------------


def _damage_dataset(good: Path, dest: Path, how: str) -> Path:
    d = shutil.copytree(good, dest)
    t = d / "train"
    if how == "index truncated":
        data = (t / "index.npy").read_bytes()
        (t / "index.npy").write_bytes(data[: len(data) // 2])
    elif how == "index random":
        (t / "index.npy").write_bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes())
    elif how == "index offsets past data.bin":
        index = np.load(t / "index.npy")
        index[7, 0] += 10_000_000
        np.save(t / "index.npy", index)
    elif how == "data.bin truncated":
        with open(t / "data.bin", "r+b") as f:
            f.truncate((t / "data.bin").stat().st_size // 2)
    elif how == "data.bin empty":
        (t / "data.bin").write_bytes(b"")
    elif how == "stats truncated":
        data = (d / "stats.safetensors").read_bytes()
        (d / "stats.safetensors").write_bytes(data[:100])
    elif how == "meta.json missing keys":
        meta = json.loads((d / "meta.json").read_text())
        del meta["splits"]
        (d / "meta.json").write_text(json.dumps(meta))
    elif how == "label out of range":
        index = np.load(t / "index.npy")
        index[3, 2] = 10
        np.save(t / "index.npy", index)
    elif how == "jpeg record zeroed":
        index = np.load(t / "index.npy")
        with open(t / "data.bin", "r+b") as f:
            f.seek(int(index[5, 0]))
            f.write(bytes(int(index[5, 1])))
    else:
        raise AssertionError(how)
    return d


DATASET_DAMAGE = {  # what is damaged -> what the one line says
    "index truncated": "train/index.npy: unreadable index",
    "index random": "train/index.npy: unreadable index",
    "index offsets past data.bin": "train/data.bin: record 7 (bytes",
    "data.bin truncated": "lies outside the file's",
    "data.bin empty": "train/data.bin: record 0 (bytes 0..",
    "stats truncated": "stats.safetensors: unreadable",
    "meta.json missing keys": "meta.json: damaged (no 'splits' or 'classes')",
    "label out of range": "train/index.npy: record 3 has label 10, but the dataset has 10 classes",
    "jpeg record zeroed": "train/data.bin: record 5 cannot be decoded",
}


def test_damaged_dataset_files_end_in_one_line_naming_the_file(tmp_path: Path) -> None:
    g = np.random.default_rng(1)
    arrays = {s: (g.integers(0, 256, (n, 36, 36, 3), dtype=np.uint8), np.arange(n) % 10) for s, n in (("train", 40), ("val", 20))}
    good = write_arrays(tmp_path / "good", arrays, classes=[f"k{i}" for i in range(10)], encoding="jpeg")
    cases = []
    for i, how in enumerate(DATASET_DAMAGE):
        d = _damage_dataset(good, tmp_path / f"bad{i}", how)
        cases.append(["train", "--data", str(d), "--model", "lenet5", "--out", str(tmp_path / f"out{i}"), "--epochs", "1",
                      "--batch-size", "8", "--workers", "0", "--no-progress"])
    for how, r in zip(DATASET_DAMAGE, drive(cases)):
        line = one_line(r["err"], r["rc"])
        assert DATASET_DAMAGE[how] in line, (how, line)
        assert str(tmp_path / f"bad{list(DATASET_DAMAGE).index(how)}") in line, (how, line)


# -- 10, 11, 12: damaged runs and resume mistakes ------------------------------------------------------


def test_damaged_run_files_and_resume_mistakes(run: Path, tmp_path: Path) -> None:
    ck = "checkpoints/ckpt-000000010.pt"

    def damaged(name: str, rel: str, data: bytes | None) -> Path:
        out = copy_run(run, tmp_path / name)
        if data is None:
            (out / rel).unlink()
        else:
            (out / rel).write_bytes(data)
        return out

    empty = tmp_path / "empty"
    empty.mkdir()
    no_config = damaged("noconfig", "config.yaml", None)
    shutil.rmtree(no_config / "checkpoints")
    (no_config / "checkpoints").mkdir()
    for keep in ("ckpt-000000002.pt", "ckpt-000000004.pt"):
        shutil.copy(run / "checkpoints" / keep, no_config / "checkpoints" / keep)
    short = copy_run(run, tmp_path / "short")
    config_before = (short / "config.yaml").read_bytes()
    torn = copy_run(run, tmp_path / "torn")
    shutil.rmtree(torn / "checkpoints")
    (torn / "checkpoints").mkdir()
    for keep in ("ckpt-000000008.pt", "ckpt-000000010.pt"):
        shutil.copy(run / "checkpoints" / keep, torn / "checkpoints" / keep)
    (torn / ck).write_bytes((run / ck).read_bytes()[:5000])  # the latest checkpoint cut short
    only_torn = damaged("onlytorn", ck, (run / ck).read_bytes()[:5000])
    for p in (only_torn / "checkpoints").iterdir():
        if p.name != "ckpt-000000010.pt":
            p.unlink()
    (torn / ckpt.WEIGHTS).unlink()
    (torn / "summary.json").unlink()
    cases = {
        "empty folder": (resume_args(empty), f"nothing to resume in {empty} (no config.yaml and no checkpoint)"),
        "mistyped folder": (resume_args(tmp_path / "rnu"), f"nothing to resume in {tmp_path / 'rnu'} (no such folder)"),
        "epochs below the checkpoint": (resume_args(short, "--epochs", "1"),
                                        f"{short}: its latest checkpoint ends epoch 2, past epochs=1; nothing to train"),
        "only checkpoint torn": (resume_args(only_torn), "ckpt-000000010.pt: unreadable checkpoint"),
        "config.yaml damaged": (resume_args(damaged("badyaml", "config.yaml", b"epochs: [\n")), "config.yaml: not valid YAML"),
        "metrics.jsonl garbage": (resume_args(damaged("badmetrics", "metrics.jsonl", b"{not json}\n{}\n"), "--epochs", "3"),
                                  "metrics.jsonl:1: not JSON"),
        "weights truncated, evaluate": (["evaluate", str(damaged("badweights", ckpt.WEIGHTS, b"\x00" * 100))],
                                        "model.safetensors: not a readable safetensors file"),
    }
    finished = copy_run(run, tmp_path / "finished")
    finished_before = snapshot(finished)
    results = drive([argv for argv, _ in cases.values()] + [resume_args(no_config), resume_args(torn),
                                                            resume_args(finished)])
    for (name, (_, want)), r in zip(cases.items(), results):
        assert want in one_line(r["err"], r["rc"]), (name, r["err"])
    assert (short / "config.yaml").read_bytes() == config_before  # the refusal rewrote nothing
    # config.yaml lost: the checkpoint's config is used (and said); the run continues to its end.
    r = results[len(cases)]
    assert r["rc"] == 0 and "config.yaml is missing; using the config saved in" in r["err"], r["err"][-2000:]
    assert (no_config / ckpt.WEIGHTS).read_bytes() == (run / ckpt.WEIGHTS).read_bytes()
    # A torn latest checkpoint: set aside, the previous one used, both said; nothing else lost.
    r = results[len(cases) + 1]
    assert r["rc"] == 0, r
    assert (f"warning: {torn / ck}: unreadable checkpoint" in r["out"] and f"set aside as {torn / ck}.damaged; resuming "
            f"from the previous checkpoint {torn / 'checkpoints' / 'ckpt-000000008.pt'}" in r["out"]), r["out"]
    assert (torn / (ck + ".damaged")).is_file()
    assert (torn / ckpt.WEIGHTS).read_bytes() == (run / ckpt.WEIGHTS).read_bytes()
    # --resume of a finished run: said, and nothing trained or rewritten.
    r = results[len(cases) + 2]
    assert r["rc"] == 0 and f"{finished}: already finished (2 of 2 epochs); nothing to do" in r["out"], r
    assert snapshot(finished) == finished_before


# -- 9: signals during set-up -------------------------------------------------------------------------


def test_sigterm_while_train_builds_the_data_cache_exits_143_and_leaves_no_partial_folders(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a = Proc(["train", "--data", "synthetic", "--model", "lenet5", "--out", str(tmp_path / "run"), "--epochs", "1",
              "--workers", "0", "--no-progress"], tmp_path, pause_at="alexnet.data.sources.synthetic:generate:1",
             env={"ALEXNET_CACHE": str(cache)})
    a.wait_paused()
    a.p.send_signal(signal.SIGTERM)
    rc, _, err = a.finish()
    assert one_line(err, rc, code=143) == "alexnet train: terminated"
    assert not [p.name for p in cache.rglob("*") if p.is_dir() or p.suffix == ".lock"], list(cache.rglob("*"))


def test_ctrl_c_while_the_command_starts_is_one_line(tmp_path: Path) -> None:
    # Within the first second Python is importing torch and the commands: no traceback either way.
    p = subprocess.Popen([sys.executable, "-m", "alexnet", "train", "--data", "synthetic", "--model", "lenet5", "--out",
                          str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "ALEXNET_CACHE": str(tmp_path / "cache")})
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]


def test_sigterm_during_prepare_keeps_the_work_and_the_rerun_resumes(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "cc"
    args = ["prepare", str(tree), "--out", str(out), "--workers", "1", "--quiet"]
    a = Proc(args, tmp_path, pause_at="alexnet.data.writer:SplitWriter.add:6", env={"PREPARE_CHUNK": "4"})
    a.wait_paused()
    a.p.send_signal(signal.SIGTERM)  # like Ctrl-C: finish the chunk, checkpoint, stop
    rc, _, err = a.finish()
    assert one_line(err, rc, code=143) == "alexnet prepare: terminated"
    progress = json.loads((Path(str(out) + ".partial") / "progress.json").read_text())
    assert progress["splits"]["train"]["rows"] == 8
    rc, _, err = cli(args, env={"PREPARE_CHUNK": "4"})
    assert rc == 0, err[-2000:]
    d = PreparedDataset(out, "train")
    np.testing.assert_array_equal(d.read_batch(range(len(d))).permute(0, 2, 3, 1).numpy(), tree_pixels(tree, "train"))


@pytest.mark.slow
def test_sigterm_during_an_experiment_checkpoints_and_prints_the_resume_command(ds: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    a = Proc(["experiment", "dropout", "--data", str(ds), "--out", str(out), "--device", "cpu", "--workers", "0"], tmp_path,
             pause_at="alexnet.engine.fast_step:FastStep.__call__:2", env={"ALEXNET_EXPERIMENT_SCALE": "test"})
    a.wait_paused()
    a.p.send_signal(signal.SIGTERM)
    rc, _, err = a.finish()
    assert rc == 143 and "Traceback" not in err, err[-3000:]
    assert "stopped by SIGTERM: checkpoint written to" in err
    assert f"resume with: alexnet experiment dropout --data {ds} --out {out}" in err
    assert list(out.rglob("ckpt-*.pt"))


# -- 7, 8, 9: bad values and places, one line each -----------------------------------------------------


def test_bad_config_values_and_unwritable_places_are_one_line(ds: Path, run: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    base = ["train", "--data", str(ds), "--model", "lenet5", "--out", str(tmp_path / "never")]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(200))
    cases: list[tuple[list[str], str]] = []
    for field, value, accepted in [("epochs", '"ten"', "an integer ≥ 1"), ("batch_size", "[8]", "an integer ≥ 1"),
                                   ("lr", '"fast"', "a number > 0"), ("step_epochs", "3", "a list of epochs"),
                                   ("model_options", "3", "a mapping"), ("epochs", "1.5", "an integer ≥ 1")]:
        r = tmp_path / f"{field}-{len(cases)}.yaml"
        r.write_text(f"model: lenet5\n{field}: {value}\n")
        cases.append(([*base, "--recipe", str(r)], f"{field}="))
    cases += [
        ([*base, "--set", "epochs=ten"], "epochs='ten' is not valid; accepted: an integer ≥ 1"),
        ([*base, "--seed", "-1"], "seed=-1 is not valid; accepted: an integer ≥ 0"),
        ([*base, "--save-every", "-3"], "save_every=-3 is not valid"),
        ([*base, "--workers", "-7"], "workers=-7 is not valid; accepted: an integer ≥ 0, or -1 for automatic"),
        ([*base, "--keep", "-1"], "keep_checkpoints=-1 is not valid"),
        (["train", "--data", str(ds), "--model", "lenet5", "--out", str(a_file / "run")], f"{a_file / 'run'}: cannot be created"),
        (["prepare", str(ds), "--out", str(a_file / "ds")], f"{a_file / 'ds'}: cannot be created"),
        (["evaluate", str(copy_run(run, tmp_path / "r2")), "--confusion", str(a_file / "c.png")],
         f"--confusion {a_file / 'c.png'}: cannot be written"),
        (["download", "cifar10", "--out", str(tmp_path / "dl"), "--base-url", "not-a-url"], "--base-url 'not-a-url': not a URL"),
        (["prepare", str(tmp_path / "cifar"), "--out", str(tmp_path / "c-out")], "unreadable CIFAR archive"),
    ]
    del recipe
    for (argv, want), r in zip(cases, drive([argv for argv, _ in cases])):
        assert want in one_line(r["err"], r["rc"]), (argv, r["err"])
    assert not (tmp_path / "r2" / "eval.json").exists()  # refused before the evaluation, not after it


# -- 3, 4, 9, 13, 14: what a folder tree may hold ---------------------------------------------------


def test_symlinks_into_the_tree_are_skipped_and_reported_not_followed(tmp_path: Path) -> None:
    from alexnet.data.prepare import prepare

    t = image_tree(tmp_path / "t", per_class=3, val_per_class=2)
    (t / "train" / "c0" / "loop").symlink_to("..")  # train/c0/loop -> train: a loop
    (t / "train" / "c1" / "val-copy").symlink_to(t / "val" / "c1")  # val leaking into train
    (t / "train" / "c1" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    outside = image_tree(tmp_path / "elsewhere", per_class=1, val_per_class=0)
    (t / "train" / "c0" / "shared").symlink_to(outside / "train" / "c0")  # outside the tree: followed
    out = prepare(t, tmp_path / "out", workers=1, progress=False)
    assert len(PreparedDataset(out, "train")) == 3 + 3 + 1 and len(PreparedDataset(out, "val")) == 4
    report = json.loads((out / "prepare_report.json").read_text())
    skipped = {e["file"]: e["codes"] for e in report["skipped"]}
    assert skipped == {"train/c0/loop": ["link_into_tree"], "train/c1/val-copy": ["link_into_tree"],
                       "train/c1/dangling.png": ["unreadable"]}


def test_source_stamp_sees_sizes_and_mtimes_and_odd_file_names(tmp_path: Path) -> None:
    from alexnet.data.sources.folder import FolderSource

    t = image_tree(tmp_path / "t", per_class=2, val_per_class=1)
    bad_name = os.fsencode(t / "train" / "c0") + b"/caf\xe9.png"  # Latin-1, not UTF-8
    shutil.copy(t / "train" / "c0" / "00.png", bad_name)
    stamp = FolderSource(t).fingerprint()
    img = t / "train" / "c1" / "01.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(img)  # same name, new content
    assert FolderSource(t).fingerprint() != stamp
    stamp = FolderSource(t).fingerprint()
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))  # touched
    assert FolderSource(t).fingerprint() != stamp
    r = drive([["prepare", str(t), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet"]])[0]
    assert r["rc"] == 0 and "Traceback" not in r["err"], r["err"][-2000:]
    assert len(PreparedDataset(tmp_path / "out", "train")) == 5


def test_predict_and_prepare_read_16_bit_images_alike(tmp_path: Path) -> None:
    from alexnet.data.decode import load_image
    from alexnet.engine.inference import read_image

    a = (np.arange(36 * 36, dtype=np.uint16).reshape(36, 36) * 50 + 1000).astype(np.uint16)  # 1000 .. 65750
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)  # 16-bit greyscale PNG
    assert Image.open(path).mode.startswith("I")
    prepared = np.asarray(load_image(path.read_bytes(), path.name, (36, 36))[0])
    predicted = read_image(path, (36, 36)).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(predicted, prepared)
    np.testing.assert_array_equal(predicted[..., 0], np.rint(a / 257).astype(np.uint8))  # scaled, not clipped


def test_huge_stray_files_are_judged_by_size_and_signature_without_being_read(tmp_path: Path) -> None:
    from alexnet.data.decode import Skip, read_file

    video = tmp_path / "movie.mkv"
    with open(video, "wb") as f:
        f.write(b"\x1aE\xdf\xa3")  # Matroska's signature
        f.truncate(64 << 20)  # sparse: no disk used
    with pytest.raises(Skip) as e:
        read_file(video)
    assert e.value.code == "not_image" and "not read" in e.value.detail
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0")
        f.truncate((1 << 30) + 1)
    with pytest.raises(Skip) as e:
        read_file(huge)
    assert e.value.code == "too_large"
    assert read_file(_small_png(tmp_path)).startswith(b"\x89PNG")  # ordinary files are read as before


def _small_png(tmp: Path) -> Path:
    p = tmp / "small.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p)
    return p


# -- a real full (and read-only) disk, where the machine lets us mount one -----------------------------


@pytest.fixture
def tmpfs(tmp_path: Path):
    """``tmpfs(size)``: a real tmpfs of that size (mount's notation, e.g. "128k") in a new folder under
    tmp_path, unmounted after the test; skips where none can be mounted."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root (the ENOSPC-injection tests cover the same paths)")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(d)
        return d

    try:
        yield mount
    finally:
        for d in mounted:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture
def small_disk(tmpfs) -> Path:
    return tmpfs("128k")


def test_a_real_full_disk_during_prepare_and_a_read_only_one(tree: Path, run: Path, small_disk: Path, tmp_path: Path) -> None:
    out = small_disk / "cc"
    args = ["prepare", str(tree), "--out", str(out), "--workers", "1", "--quiet"]
    every_chunk = {"PREPARE_CHECKPOINT_SECONDS": "0", "PREPARE_CHUNK": "4"}
    rc, _, err = cli(args, env=every_chunk)  # 16 training images of 4,800 bytes and the statistics checkpoints do not fit in 128 kB
    line = one_line(err, rc)
    partial = Path(str(out) + ".partial")
    m = re.search(rf"No space left on device; the (\d+) images prepared up to the last checkpoint are kept in {partial}", line)
    assert m, line
    assert (partial / "train" / "data.bin").stat().st_size == int(m.group(1)) * 40 * 40 * 3
    subprocess.run(["mount", "-o", "remount,size=2m", str(small_disk)], check=True)  # space freed
    rc, _, err = cli(args, env=every_chunk)
    assert rc == 0, err[-2000:]
    d = PreparedDataset(out, "train")
    np.testing.assert_array_equal(d.read_batch(range(len(d))).permute(0, 2, 3, 1).numpy(), tree_pixels(tree, "train"))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    results = drive([["train", "--data", str(out), "--model", "lenet5", "--out", str(small_disk / "run")],
                     ["evaluate", str(copy_run(run, tmp_path / "r")), "--confusion", str(small_disk / "c.png")]])
    assert f"{small_disk / 'run'}: cannot be created" in one_line(results[0]["err"], results[0]["rc"])
    assert "Read-only file system" in one_line(results[1]["err"], results[1]["rc"])
