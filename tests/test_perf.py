"""The benchmarks' library (alexnet.perf) and the guards of benchmarks/gpu.py: a time limit that
interrupts a hung wait, rows that fail, hang or miss the deadline recorded as such with the results
file rewritten after each (alexnet.perf.guarded), gpu.py's plan, the preflight on a machine without a GPU, and ``alexnet bench model``
timing the training step ``alexnet train`` runs."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.cli import main
from alexnet.engine.fast_step import FastStep
from alexnet.environment import environment
from alexnet.perf.timing import TimeLimitExceeded, time_calls, time_limit

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"


def _gpu_module():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["gpu_bench"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _hang(q: "mp.Queue[int]") -> None:
    time.sleep(60)  # a worker that never delivers


def test_time_limit_interrupts_a_hung_worker_wait() -> None:
    ctx = mp.get_context("fork")
    q: "mp.Queue[int]" = ctx.Queue()
    p = ctx.Process(target=_hang, args=(q,), daemon=True)
    p.start()
    t = time.perf_counter()
    try:
        with pytest.raises(TimeLimitExceeded), time_limit(0.5):
            q.get()  # blocks forever without the limit
    finally:
        p.kill()
        p.join()
    assert time.perf_counter() - t < 5
    with time_limit(0.5):  # a block that ends in time is untouched, and the timer is gone after it
        pass
    time.sleep(0.7)


def test_time_calls_counts_every_call() -> None:
    calls = []
    samples = time_calls(lambda: calls.append(1), torch.device("cpu"), iters=3, repeats=2, warmup=1)
    assert len(calls) == 1 + 3 * 2 and len(samples) == 2 and all(s >= 0 for s in samples)


def _run(tmp_path: Path):
    from alexnet.perf.guarded import GuardedRun

    return GuardedRun(tmp_path / "gpu-cpu.json", environment("cpu"), {"device": "cpu"}, row_timeout=0.5)


def test_rows_that_fail_hang_or_miss_the_deadline_are_recorded(tmp_path: Path) -> None:
    r = _run(tmp_path)
    r.measure({"mode": "model-only", "model": "m1"}, 0, lambda: {"img_per_s": 10.0})
    on_disk = json.loads(r.path.read_text())["rows"]  # written after the row, before the run ends
    assert [row["model"] for row in on_disk] == ["m1"] and on_disk[0]["img_per_s"] == 10.0
    assert on_disk[0]["device"] == "cpu" and on_disk[0]["row_s"] >= 0

    def boom() -> dict:
        raise RuntimeError("no step\nsecond line")

    r.measure({"mode": "model-only", "model": "m2"}, 0, boom)
    t = time.perf_counter()
    r.measure({"mode": "end-to-end", "model": "m3"}, 0, lambda: time.sleep(30))  # a hung loader
    assert time.perf_counter() - t < 5
    r.deadline = r.elapsed() + 1
    r.measure({"mode": "end-to-end", "model": "m4"}, 100, lambda: pytest.fail("ran past the deadline"))
    rows = json.loads(r.path.read_text())["rows"]
    assert [row["model"] for row in rows] == ["m1", "m2", "m3", "m4"]
    assert rows[1]["error"] == "RuntimeError: no step" and rows[1]["img_per_s"] is None
    assert rows[2]["error"].startswith("TimeLimitExceeded")
    assert rows[3]["skipped"].startswith("deadline") and rows[3]["img_per_s"] is None


def test_a_failing_phase_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    from alexnet.perf.markdown import markdown

    r = _run(tmp_path)

    def broken() -> None:
        raise OSError("disk full")

    assert r.phase("dataset", broken) is None
    assert json.loads(r.path.read_text())["errors"] == [{"phase": "dataset", "error": "OSError: disk full"}]
    assert "**dataset failed**: OSError: disk full" in markdown(json.loads(r.path.read_text()))
    assert r.phase("flops", lambda: 42) == 42


def test_the_gpu_plan_puts_the_headline_rows_first() -> None:
    """benchmarks/gpu.py's plan for the GPU machine (built without one): the compiled paper net, the
    same without LRN, alexnet train, then the same step end to end; torchvision's reference recipe
    after its step and before alexnet-owt; nvJPEG's rows after every reference row on CPU-decoded
    JPEGs; the extras last."""
    gpu = _gpu_module()
    args = gpu.parse_args(["--device", "cuda"])
    labels = [row.label for row in gpu.plan(args, cuda=True)]
    assert labels[:4] == ["model-only alexnet compile", "model-only alexnet-nolrn compile", "train alexnet decode cpu",
                          "end-to-end alexnet decode cpu"]
    assert labels.index("model-only torchvision eager") < labels.index("end-to-end torchvision reference recipe") \
        < labels.index("model-only alexnet-owt compile") < labels.index("end-to-end alexnet decode auto")
    assert labels[-2:] == ["model-only alexnet compile lrn_mode=plain", "model-only alexnet compile+cudagraphs"]
    assert len(labels) == len(set(labels))
    assert "end-to-end torchvision reference recipe, ImageNet-sized JPEGs" in labels
    tiny = [row.label for row in gpu.plan(gpu.parse_args(["--device", "cpu", "--tiny"]), cuda=False)]
    assert "model-only alexnet-towers eager" not in tiny and "model-only alexnet compile+cudagraphs" not in tiny


def test_preflight_runs_without_a_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--preflight"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    out = proc.stdout
    assert f"torch {torch.__version__}" in out and "/dev/shm" in out
    assert "no GPU" in out
    assert "ok    LRN op: plain, 2×96×55×55" in out
    assert "ok    compiled step: alexnet, batch 2" in out


def test_bench_model_times_the_training_step(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    calls = []
    real = FastStep.__call__

    def counted(self, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(FastStep, "__call__", counted)
    rc = main(["bench", "model", "--model", "alexnet-cifar", "--device", "cpu", "--batch-size", "4", "--steps", "2",
               "--warmup", "1", "--num-classes", "10", "--json"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)
    assert len(calls) == 3  # warm-up + timed steps, all through FastStep
    assert calls[0].augment is not None  # the augmentation runs in the step, as in training
    assert row["step"].startswith("FastStep") and row["optimizer"] == "PaperSGD §5 (foreach)"
    assert row["img_per_s"] > 0


def test_photo_dataset_is_written_as_write_arrays_writes_the_same_images(tmp_path: Path, monkeypatch) -> None:
    """The benchmark fixtures write through the one dataset writer, JPEG encoder and statistics
    computation: given the same images, they write what ``write_arrays`` writes, whatever the
    number of processes that drew them, and the image folder holds the same JPEG files."""
    from alexnet.data.format import PreparedDataset
    from alexnet.data.writer import write_arrays
    from alexnet.perf import fixtures

    def images(kind, n, size, seed, start):  # image i depends on i only (and on the split's seed)
        for i in range(start, start + n):
            yield np.random.default_rng([seed // 1_000_003, i]).integers(0, 256, (*size, 3), dtype=np.uint8)

    monkeypatch.setattr(fixtures, "_images", images)  # forked workers inherit it
    drawn = {split: np.stack(list(images("", count, (32, 32), seed * 1_000_003, 0)))
             for split, count, seed in (("train", 12, 0), ("val", 3, 1))}
    want = write_arrays(tmp_path / "arrays", {k: (v, np.arange(len(v)) % 4) for k, v in drawn.items()},
                        classes=[f"class{c}" for c in range(4)], encoding="jpeg")
    for procs in (1, 2):
        got = fixtures.make_photo_dataset(tmp_path / f"procs{procs}", 12, size=32, n_val=3, classes=4, procs=procs)
        for split in ("train", "val"):
            assert (got / split / "data.bin").read_bytes() == (want / split / "data.bin").read_bytes(), (procs, split)
            assert (np.load(got / split / "index.npy") == np.load(want / split / "index.npy")).all(), (procs, split)
        a, b = PreparedDataset(got).stats(), PreparedDataset(want).stats()
        for key in ("mean", "eigval", "eigvec"):
            assert torch.equal(a[key], b[key]), (procs, key)
    folder = fixtures.make_image_folder(tmp_path / "folder", 12, (32, 32), classes=4, procs=2)
    files = sorted(folder.rglob("*.jpg"), key=lambda p: p.name)
    assert [p.parent.name for p in files] == [f"class{i % 4}" for i in range(12)]
    assert [p.read_bytes() for p in files] == [PreparedDataset(want).record(i).tobytes() for i in range(12)]


def test_fixture_workers_forked_after_torch_ran_in_parallel_do_not_hang(tmp_path: Path) -> None:
    """The fixtures' pool forks from a process whose torch has already run multithreaded (as in
    benchmarks/gpu.py, which builds its ImageNet-sized folder after the model steps). A forked child
    that enters torch's OpenMP pool waits forever for threads fork did not copy; the workers encode
    with Pillow on one torch thread and finish."""
    code = ("import sys, torch\nfrom pathlib import Path\nfrom alexnet.perf import fixtures\n"
            "torch.set_num_threads(2)\ntorch.ones(1 << 22).mul_(2)  # the parent's OpenMP threads exist\n"
            "fixtures.make_image_folder(Path(sys.argv[1]), 4, (375, 500), kind='synthetic', procs=2, classes=2)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "f")], stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its hung workers
        proc.communicate()
        pytest.fail("the fixture workers hung")
    assert proc.returncode == 0, err[-3000:]
    assert len(list((tmp_path / "f").rglob("*.jpg"))) == 4


def test_results_file_carries_its_provenance_and_is_written_atomically(tmp_path: Path) -> None:
    """Every benchmark writes through one helper: the environment, git SHA and date beside the
    numbers, keys the result already holds kept, and a write that fails leaves the previous file whole."""
    from alexnet.perf.results import results_path, slug, write_results

    env = {**environment("cpu"), "date_utc": "2026-12-02 10:00:00 UTC", "git_sha": "abc", "git_dirty": False}
    path = results_path(tmp_path / "results", f"lrn-{slug('NVIDIA H100 80GB HBM3')}", env)
    assert path == tmp_path / "results" / "lrn-nvidia-h100-80gb-hbm3-2026-12-02.json"
    assert slug("AMD EPYC 7763 64-Core Processor", 12) == "amd-epyc-776"
    write_results(path, {"rows": [1], "date": "kept", "config": {"out": tmp_path}}, env)
    doc = json.loads(path.read_text())
    assert doc["rows"] == [1] and doc["date"] == "kept" and doc["config"]["out"] == str(tmp_path)
    assert doc["environment"] == env and doc["git_sha"] == "abc" and doc["git_dirty"] is False
    with pytest.raises(TypeError):
        write_results(path, {"rows": [object()]}, env)
    assert json.loads(path.read_text()) == doc
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
