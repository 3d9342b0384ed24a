"""The training loader: one global shuffle sliced per rank, evaluation shards that
cover every sample once, identical batches whatever the worker count or resume point, the
device-decode path (run with the CPU decoder standing in for nvJPEG), and the bench command."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data.format import DatasetError, PreparedDataset
from alexnet.data.loader import BatchLoader, epoch_permutation, shard
from alexnet.data.stats import StatsAccumulator
from alexnet.data.writer import DatasetWriter, write_arrays

H, W = 40, 48  # not square: a transposed H/W shows up as a shape error


def _photo(rng: np.random.Generator) -> np.ndarray:
    # Smooth gradients plus noise: JPEG-friendly, and every image differs.
    y, x = np.mgrid[0:H, 0:W]
    base = rng.uniform(0, 255, 3)[None, None] + rng.uniform(-2, 2, 3)[None, None] * (x[..., None] + y[..., None])
    return np.clip(base + rng.normal(0, 20, (H, W, 3)), 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(img).save(b, "JPEG", quality=90)
    return b.getvalue()


def make_jpeg_dataset(root: Path, n_train: int = 30, n_val: int = 25, bad: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    out = root / "ds"
    with DatasetWriter(out, ["a", "b", "c"]) as dw:
        for split, n in (("train", n_train), ("val", n_val)):
            sw = dw.split(split, "jpeg", (H, W))
            acc = StatsAccumulator((H, W))
            for i in range(n):
                img = _photo(rng)
                acc.add(img)
                sw.add(b"not a jpeg at all" if (split == "train" and i == bad) else _jpeg(img), i % 3)
            dw.close_split(split)
            if split == "train":
                dw.write_stats(*acc.finish())
        dw.commit()
    return out


@pytest.fixture(scope="module")
def jpeg_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_jpeg_dataset(tmp_path_factory.mktemp("jpeg"))


def _reference(ds: PreparedDataset, idx: torch.Tensor) -> torch.Tensor:
    # One record at a time through the format's own decoder: independent of the loader's path.
    return torch.stack([ds[int(i)][0] for i in idx])


def _run(loader: BatchLoader, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(b.indices.clone(), b.images.clone(), b.labels.clone()) for b in loader.iterate(start)]


def test_rank_slices_union_is_the_global_batch(jpeg_ds: Path) -> None:
    ds = PreparedDataset(jpeg_ds, "train")
    full = BatchLoader(ds, 12, shuffle=True, seed=3, workers=0)
    full.set_epoch(2)
    ref = full.global_batches()
    assert len(ref) == 30 // 12
    perm = epoch_permutation(30, 3, 2)
    assert np.array_equal(np.concatenate(ref), perm[: 12 * len(ref)])
    assert not np.array_equal(epoch_permutation(30, 3, 1), perm)  # the epoch reshuffles
    for ws in (1, 2, 3):
        parts = []
        for r in range(ws):
            lo = BatchLoader(ds, 12, shuffle=True, seed=3, workers=0, rank=r, world_size=ws)
            lo.set_epoch(2)
            parts.append(lo.global_batches())
            assert len(lo) == len(ref)
        for step, g in enumerate(ref):
            assert np.array_equal(np.concatenate([p[step] for p in parts]), g)


def test_rank_slices_deliver_their_images(jpeg_ds: Path) -> None:
    ds = PreparedDataset(jpeg_ds, "train")
    for r in range(2):
        lo = BatchLoader(ds, 12, shuffle=True, seed=1, workers=1, rank=r, world_size=2)
        for b in lo:
            assert b.images.shape == (6, 3, H, W)
            assert torch.equal(b.images, _reference(ds, b.indices))
            assert torch.equal(b.labels, torch.from_numpy(ds.labels[b.indices.numpy()]))


def test_batch_not_divisible_by_world_size(jpeg_ds: Path) -> None:
    from alexnet.errors import UserError

    with pytest.raises(UserError, match="not divisible"):
        BatchLoader(PreparedDataset(jpeg_ds, "train"), 10, shuffle=True, world_size=3)


@pytest.mark.parametrize("ws", [1, 2, 3])
def test_evaluation_shards_cover_every_index_once(jpeg_ds: Path, ws: int) -> None:
    ds = PreparedDataset(jpeg_ds, "val")  # 25 images: uneven shards and a partial last batch
    seen = []
    for r in range(ws):
        lo = BatchLoader(ds, 6 * ws, shuffle=False, workers=1 if r == 0 else 0, rank=r, world_size=ws)
        for b in lo:
            assert torch.equal(b.images, _reference(ds, b.indices))
            seen.append(b.indices)
    allidx = torch.cat(seen).numpy()
    assert len(allidx) == len(ds)
    assert np.array_equal(np.sort(allidx), np.arange(len(ds)))
    assert sorted(np.concatenate([shard(np.arange(25), r, ws) for r in range(ws)]).tolist()) == list(range(25))


def test_same_batches_for_any_worker_count_and_resume(jpeg_ds: Path) -> None:
    ds = PreparedDataset(jpeg_ds, "train")
    runs = {}
    for workers in (0, 1, 2):
        lo = BatchLoader(ds, 4, shuffle=True, seed=7, workers=workers)
        lo.set_epoch(1)
        runs[workers] = _run(lo)
    assert len(runs[0]) == 30 // 4
    for workers in (1, 2):
        for (i0, x0, y0), (i1, x1, y1) in zip(runs[0], runs[workers], strict=True):
            assert torch.equal(i0, i1) and torch.equal(x0, x1) and torch.equal(y0, y1)
    for i, x, _ in runs[0]:
        assert torch.equal(x, _reference(ds, i))
    # Exact resume inside the epoch, with and without workers.
    for workers in (0, 2):
        lo = BatchLoader(ds, 4, shuffle=True, seed=7, workers=workers)
        lo.set_epoch(1)
        resumed = _run(lo, start=3)
        assert len(resumed) == len(runs[0]) - 3
        for (i0, x0, _), (i1, x1, _) in zip(runs[0][3:], resumed, strict=True):
            assert torch.equal(i0, i1) and torch.equal(x0, x1)


def test_kept_batches_stay_intact_and_buffers_are_reused(jpeg_ds: Path) -> None:
    ds = PreparedDataset(jpeg_ds, "train")
    lo = BatchLoader(ds, 2, shuffle=True, seed=0, workers=2, prefetch=1)
    kept = list(lo)  # holds every batch: the loader must not reuse their buffers
    assert len(kept) == 15
    for b in kept:
        assert torch.equal(b.images, _reference(ds, b.indices))
    assert len(lo._slots) >= 15
    del kept, b
    lo2 = BatchLoader(ds, 2, shuffle=True, seed=0, workers=2, prefetch=1)
    for b in lo2:
        assert torch.equal(b.images, _reference(ds, b.indices))
    # Consumed one at a time: in-flight depth (2 workers × 1) plus the one held, plus slack.
    assert len(lo2._slots) <= 2 + 2


def test_global_rng_is_not_consumed(jpeg_ds: Path) -> None:
    ds = PreparedDataset(jpeg_ds, "train")
    state = torch.random.get_rng_state()
    for workers in (0, 2):
        for _ in BatchLoader(ds, 8, shuffle=True, seed=0, workers=workers):
            pass
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("fraction", [0.5, 1.0])
@pytest.mark.parametrize("workers", [0, 2])
def test_device_decode_path_matches_cpu(jpeg_ds: Path, fraction: float, workers: int) -> None:
    # decode="cuda"/"auto" without a GPU: the same code path (workers gather the bytes of the
    # device share, the main process decodes them as one batch) with the CPU decoder standing in.
    ds = PreparedDataset(jpeg_ds, "train")
    ref = _run(BatchLoader(ds, 8, shuffle=True, seed=5, workers=0))
    lo = BatchLoader(ds, 8, shuffle=True, seed=5, workers=workers)
    lo.decode_device, lo.gpu_fraction = torch.device("cpu"), fraction
    assert lo._n_cpu(8) == (4 if fraction == 0.5 else 0)
    got = _run(lo)
    assert len(got) == len(ref)
    for (i0, x0, _), (i1, x1, _) in zip(ref, got, strict=True):
        assert torch.equal(i0, i1) and torch.equal(x0, x1)


def test_decode_cuda_without_gpu_is_a_clear_error(jpeg_ds: Path) -> None:
    from alexnet.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match="no CUDA device"):
        BatchLoader(PreparedDataset(jpeg_ds, "train"), 8, shuffle=True, decode="cuda")
    with pytest.raises(UserError, match="no CUDA device"):
        BatchLoader(PreparedDataset(jpeg_ds, "train"), 8, shuffle=True, decode="cuda", device="cpu")
    lo = BatchLoader(PreparedDataset(jpeg_ds, "train"), 8, shuffle=True, decode="auto")
    assert lo.gpu_fraction == 0.0  # auto falls back to the CPU workers


def test_raw_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet.errors import UserError

    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (10, 5, 7, 3), dtype=np.uint8)
    root = write_arrays(tmp_path / "raw", {"train": (imgs, np.arange(10) % 2), "val": (imgs[:3], np.zeros(3, int))}, ["x", "y"])
    ds = PreparedDataset(root, "train")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU to decode on, but nothing to decode
    with pytest.raises(UserError, match="stores raw pixels, not JPEG: there is nothing to decode"):
        BatchLoader(ds, 4, shuffle=True, decode="cuda")
    monkeypatch.undo()
    for workers in (0, 2):
        got = _run(BatchLoader(ds, 4, shuffle=True, seed=2, workers=workers))
        assert len(got) == 2
        for i, x, y in got:
            assert torch.equal(x, torch.from_numpy(imgs[i.numpy()]).permute(0, 3, 1, 2))
            assert torch.equal(y, torch.from_numpy(i.numpy() % 2))


def test_bad_record_names_it(tmp_path: Path) -> None:
    ds = PreparedDataset(make_jpeg_dataset(tmp_path, n_train=8, n_val=2, bad=5), "train")
    for workers in (0, 1):  # one line naming the file and the record, in a worker process too
        with pytest.raises(DatasetError, match=r"train/data.bin: record 5 cannot be decoded"):
            for _ in BatchLoader(ds, 8, shuffle=False, workers=workers):
                pass


def test_bench_data_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alexnet.cli import main

    rc = main(["bench", "data", "--make-photos", "48", "--work-dir", str(tmp_path), "--batch-size", "8",
               "--batches", "2", "--workers", "1", "--device", "cpu", "--prepare-images", "4", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["workers"] == 1 and out["batch_size"] == 8
    for k in ("ours_img_s", "reference_img_s", "ours_uint8_img_s", "prepare_img_s_per_core"):
        assert out[k] > 0, k
    assert out["images"] == "prepared 256×256 JPEG" or "256" in out["images"]


def test_bench_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alexnet.cli import main

    assert main(["bench", "data", "--data", str(tmp_path / "missing"), "--json"]) == 2
    assert "missing" in capsys.readouterr().err


# -- worker pool across epochs -----------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _shm_mappings() -> int:
    # Shared batch buffers are mapped from /dev/shm/torch_* (torch unlinks the names at once, so
    # they show here as "(deleted)"): a buffer nobody releases stays mapped. (The queues' own
    # semaphores, /dev/shm/sem.*, go with their feeder threads, on Python's schedule.)
    with open("/proc/self/maps") as f:
        return sum("/dev/shm/torch_" in line for line in f)


def test_workers_persist_across_epochs_with_the_same_batches(jpeg_ds: Path) -> None:
    from alexnet.data.augment import Augment

    ds = PreparedDataset(jpeg_ds, "train")
    aug = Augment.from_stats(ds.stats(), 32, seed=4)
    lo = BatchLoader(ds, 8, shuffle=True, seed=4, workers=2)
    assert lo.worker_pids() == []
    pids = None
    for epoch in range(3):
        lo.set_epoch(epoch)
        ref = BatchLoader(ds, 8, shuffle=True, seed=4, workers=0)
        ref.set_epoch(epoch)
        for b, r in zip(lo, ref, strict=True):
            assert torch.equal(b.indices, r.indices) and torch.equal(b.images, r.images)
            assert torch.equal(aug.train(b.images, b.indices, epoch), aug.train(r.images, r.indices, epoch))
        if pids is None:
            pids = lo.worker_pids()
            assert len(pids) == 2
        assert lo.worker_pids() == pids  # the same processes serve every epoch
    assert len(lo._slots) <= 2 * 2 + 2
    lo.close()


def test_an_abandoned_epoch_does_not_disturb_the_next(jpeg_ds: Path) -> None:
    ds = PreparedDataset(jpeg_ds, "train")
    lo = BatchLoader(ds, 4, shuffle=True, seed=1, workers=2, prefetch=2)
    pids, sizes = None, []
    for epoch in range(0, 6, 2):
        lo.set_epoch(epoch)
        for _ in lo:  # stop after one batch: three more are still being filled
            break
        del _
        lo.set_epoch(epoch + 1)
        ref = BatchLoader(ds, 4, shuffle=True, seed=1, workers=0)
        ref.set_epoch(epoch + 1)
        for b, r in zip(lo, ref, strict=True):
            assert torch.equal(b.indices, r.indices) and torch.equal(b.images, r.images)
        pids = pids or lo.worker_pids()
        assert lo.worker_pids() == pids and not lo._pending
        sizes.append(len(lo._slots))
    # Reused, not leaked: at most the last batch held, the 3 abandoned ones, and 2 × 2 in flight.
    assert max(sizes) <= 1 + 3 + 2 * 2
    # An iteration left unfinished while another starts (its generator still referenced).
    first = iter(lo)
    next(first)
    for b in lo:
        assert torch.equal(b.images, _reference(ds, b.indices))
    with pytest.raises(RuntimeError, match="iterated again"):
        next(first)
    assert not lo._pending and all(not s.busy for s in lo._slots.values())
    lo.close()


def test_close_stops_the_workers_and_unmaps_the_buffers(jpeg_ds: Path) -> None:
    import gc

    ds = PreparedDataset(jpeg_ds, "train")
    before = _shm_mappings()
    lo = BatchLoader(ds, 8, shuffle=True, workers=2)
    for _ in lo:
        pass
    pids = lo.worker_pids()
    assert all(_alive(p) for p in pids) and _shm_mappings() > before
    lo.close()
    assert lo.worker_pids() == [] and not any(_alive(p) for p in pids)
    del _
    gc.collect()
    assert _shm_mappings() == before
    # A loader dropped without close() stops its workers too.
    lo = BatchLoader(ds, 8, shuffle=True, workers=2)
    next(iter(lo))
    pids = lo.worker_pids()
    del lo
    gc.collect()
    assert not any(_alive(p) for p in pids)
    assert _shm_mappings() == before


def test_workers_leave_when_their_parent_is_killed(jpeg_ds: Path) -> None:
    # SIGKILL gives the loader no chance to stop its workers: they must notice on their own rather
    # than wait forever on their task queue, each holding gigabytes of shared buffers.
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys\n"
        "from alexnet.data.format import PreparedDataset\n"
        "from alexnet.data.loader import BatchLoader\n"
        "lo = BatchLoader(PreparedDataset(sys.argv[1], 'train'), 8, shuffle=True, workers=2)\n"
        "next(iter(lo))\n"
        "print(*lo.worker_pids(), flush=True)\n"
        "sys.stdin.read()\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script, str(jpeg_ds)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        pids = [int(x) for x in p.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(q) for q in pids)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    deadline = time.monotonic() + 30
    while any(_alive(q) for q in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(q) for q in pids), "loader workers outlived their killed parent"


def test_buffers_reach_workers_through_the_queue_not_fork(jpeg_ds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CUDA driver excludes page-locked memory from fork (MADV_DONTFORK): a worker forked after
    # the buffers were pinned that wrote into an inherited buffer would crash. Emulate the pinning
    # with madvise, then force new workers to start while the pinned buffers exist.
    import ctypes
    import mmap

    import alexnet.data.loader as loader_mod

    libc = ctypes.CDLL(None, use_errno=True)
    new_slot = loader_mod._new_slot

    def pinned_slot(*args: object, **kwargs: object) -> object:
        slot = new_slot(*args, **kwargs)  # type: ignore[arg-type]
        ptr, n = slot.images.data_ptr(), slot.images.untyped_storage().nbytes()
        assert ptr % mmap.PAGESIZE == 0
        assert libc.madvise(ctypes.c_void_p(ptr), ctypes.c_size_t(-(-n // mmap.PAGESIZE) * mmap.PAGESIZE), 10) == 0
        return slot

    monkeypatch.setattr(loader_mod, "_new_slot", pinned_slot)
    ds = PreparedDataset(jpeg_ds, "train")
    lo = BatchLoader(ds, 8, shuffle=True, seed=2, workers=2)
    for epoch in range(2):
        lo.set_epoch(epoch)
        for b in lo:
            assert torch.equal(b.images, _reference(ds, b.indices))
        lo._stop_pool()  # as after a worker died: the next epoch forks new workers
    lo.close()


# -- workers per node, shared memory --------------------------------------------------------------


@pytest.mark.parametrize("cpus,procs,expect", [(16, 1, 15), (16, 8, 1), (128, 8, 15), (64, 1, 16), (2, 1, 1), (2, 2, 1)])
def test_default_workers_are_shared_by_the_nodes_processes(jpeg_ds: Path, monkeypatch: pytest.MonkeyPatch,
                                                          cpus: int, procs: int, expect: int) -> None:
    from alexnet.data.loader import default_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(procs))
    assert default_workers(PreparedDataset(jpeg_ds, "train").encoding) == expect
    assert default_workers("raw") == 0  # raw records are one memmap gather per batch


def test_default_workers_count_the_cpus_this_process_may_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # A container or batch job given 4 of a 64-core machine's CPUs: 16 workers would fight over 4.
    from alexnet.data.loader import default_workers

    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {8, 9, 10, 11}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_workers("jpeg") == 3


def test_usable_cpus_are_the_affinity_mask_else_the_machines_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet.data.processes import usable_cpus

    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    assert usable_cpus() == 3
    monkeypatch.delattr("os.sched_getaffinity", raising=False)  # a platform without affinity masks
    assert usable_cpus() == 64
    monkeypatch.setattr("os.cpu_count", lambda: None)  # the count is unknown
    assert usable_cpus() == 1


@pytest.mark.parametrize("platform,method", [("linux", "fork"), ("darwin", "spawn"), ("win32", "spawn")])
def test_worker_pools_fork_on_linux_and_spawn_elsewhere(monkeypatch: pytest.MonkeyPatch, platform: str,
                                                        method: str) -> None:
    import multiprocessing
    import sys

    from alexnet.data.processes import context

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"this platform has no {method} start method")
    monkeypatch.setattr(sys, "platform", platform)
    assert context().get_start_method() == method


def test_readers_of_a_dataset_do_not_load_its_writer() -> None:
    """The format and its reader, the loader, the augmentation and evaluation read datasets;
    none of them loads the writer, the statistics computation or prepare's workers."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import alexnet.data, alexnet.data.format, alexnet.data.loader, alexnet.data.augment, alexnet.data.stream, alexnet.engine.evaluate\n"
            "alexnet.data.PreparedDataset\n"
            "print(*sorted(m for m in sys.modules if m.startswith('alexnet.')), sep='\\n')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = proc.stdout.split()
    assert "alexnet.data.format" in loaded and "alexnet.data.loader" in loaded
    assert not {"alexnet.data.writer", "alexnet.data.stats", "alexnet.data.workers"} & set(loaded), loaded


class _Statvfs:
    def __init__(self, free: int) -> None:
        self.f_bavail, self.f_frsize = free // 4096, 4096


def test_small_dev_shm_is_refused_up_front(jpeg_ds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet.errors import UserError

    ds = PreparedDataset(jpeg_ds, "train")
    need = (2 * 2 + 2) * 8 * 3 * H * W  # workers × prefetch in flight, one consumed, one spare
    seen = []

    def statvfs(path: str) -> _Statvfs:
        seen.append(path)
        return _Statvfs(free)

    monkeypatch.setattr("os.statvfs", statvfs)
    free = need + 4096
    assert BatchLoader(ds, 8, shuffle=True, workers=2).shared_bytes() == need
    assert seen == ["/dev/shm"]
    free = need - 4096
    with pytest.raises(UserError, match=r"/dev/shm has 0 MiB free.*--shm-size=.*fewer loader workers"):
        BatchLoader(ds, 8, shuffle=True, workers=2)
    BatchLoader(ds, 8, shuffle=True, workers=0)  # no workers: no shared memory
    # Every process of the node needs its own buffers.
    free = need + 4096
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UserError, match="each of this node's 2 processes"):
        BatchLoader(ds, 8, shuffle=True, workers=2)
