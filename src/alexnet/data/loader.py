"""The training loader: worker processes decode uint8 batches straight into shared-memory batch
buffers; the training device does the augmentation (:mod:`alexnet.data.augment`).

Each process reads its own slice of one global shuffle keyed by (seed, epoch), so the samples a
global batch holds do not depend on the number of processes or workers (the paper's two-GPU
setup, §3.2, trained one model on one stream of batches; so do we, however many processes).

Why not ``torch.utils.data.DataLoader``: it allocates a fresh shared-memory tensor for every
batch, and on a 256×3×256×256 uint8 batch (50 MB) the page faults of that fresh memory cost about
40% of the JPEG decoding itself (measured on the 2-core development machine: decode 115 ms, a
fresh shared buffer 40–50 ms, a reused one 5 ms). Here a small pool of batch buffers ("slots")
is allocated once per loader and reused: a worker decodes into a slot, the main process hands
out views of it, and a slot goes back to the pool only when nothing outside the loader still
holds a tensor on it (its storage's use count) and, on CUDA, once the copies queued from it have
finished (an event). A consumer that keeps batches simply makes the pool grow.

JPEG records are decoded with libjpeg-turbo in the workers, or — with ``decode="cuda"``/``"auto"``
— partly or wholly by nvJPEG on the GPU in the main process (one batched call per batch); the
workers then only gather those records' bytes. :mod:`alexnet.data.jpeg` picks the library
(TorchCodec, else torchvision). Raw records are one memmap gather per batch.
"""

from __future__ import annotations

import os
import queue
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from alexnet.data.format import DatasetError, PreparedDataset
from alexnet.data.jpeg import decode_jpeg_rgb, decode_jpegs_rgb
from alexnet.data.processes import context, init_worker, usable_cpus
from alexnet.errors import UserError

# "auto" split of each batch between CPU workers and the GPU decoder, from throughputs measured
# on an H100 machine (benchmarks/README.md, "Reference context"): nvJPEG decode + crop about 15k img/s, decode_jpeg
# about 1.5k img/s per CPU worker. The GPU share is G / (G + workers × C).
_AUTO_GPU_IMG_S = 15000.0
_AUTO_CPU_IMG_S_PER_WORKER = 1500.0
DECODE_MODES = ("cpu", "cuda", "auto")


@dataclass
class Batch:
    images: torch.Tensor  # uint8 N×3×H×W
    labels: torch.Tensor  # int64 N
    indices: torch.Tensor  # int64 N, positions in the dataset (the augmentation's key)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """One global shuffle per (seed, epoch), the same in every process."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Contiguous, unpadded shard of ``indices`` for ``rank`` (every element in exactly one shard)."""
    return np.array_split(indices, world_size)[rank]


def local_world_size() -> int:
    """Processes on this node (``LOCAL_WORLD_SIZE``, set by torchrun; 1 otherwise)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_workers(encoding: str) -> int:
    """Decoding workers per process for a dataset of ``encoding``: the CPUs this process may run
    on (:func:`~alexnet.data.processes.usable_cpus`), less one per process for the training loop,
    shared among the node's processes (8 ranks on 16 CPUs get 1 each, not 15), at most 16."""
    # Raw records are one memmap gather per batch: worker processes only add overhead.
    if encoding == "raw":
        return 0
    procs = local_world_size()
    return max(1, min(16, (usable_cpus() - procs) // procs))


SHM = "/dev/shm"


def check_shared_memory(need: int, what: str, path: str = SHM) -> None:
    """Refuse up front, in one line saying what to do, when ``path`` (the tmpfs that shared
    batch buffers live in) has less than ``need`` bytes free; Docker's default is 64 MB."""
    try:
        st = os.statvfs(path)
    except OSError:  # no such tmpfs (not Linux): torch shares memory another way
        return
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise UserError(
            f"{path} has {free / 2**20:.0f} MiB free, but {what} need about {need / 2**20:.0f} MiB of shared memory: "
            f"give the machine or container more (docker run --shm-size={max(1, -(-need // 2**30) + 1)}g, or a larger "
            f"tmpfs on {path}), or use fewer loader workers (--workers) or a smaller batch")


# ---------------------------------------------------------------------------------------------
# Batch buffers


def _use_count(t: torch.Tensor) -> int:
    # How many tensors share this storage (the temporary storage object made here counts 1).
    return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))


@dataclass
class _Slot:
    """One reusable batch buffer: decoded images (shared memory when workers fill it) and, for
    records decoded on the GPU, their bytes."""

    id: int
    images: torch.Tensor  # uint8 per×3×H×W
    data: torch.Tensor | None  # uint8 bytes of the records decoded on the device
    baseline: int = 0
    data_baseline: int = 0
    busy: bool = False  # handed to a worker, or its result not yet delivered
    event: Any = None  # CUDA event after the last device work reading this slot
    # Page-locked views were handed out as CPU tensors: the consumer may have queued an
    # asynchronous copy from them, so an event is recorded once it lets go of them.
    needs_event: bool = False
    registered: list[int] = field(default_factory=list)  # host pointers pinned by cudaHostRegister

    def free(self) -> bool:
        if self.busy or _use_count(self.images) > self.baseline:
            return False
        if self.data is not None and _use_count(self.data) > self.data_baseline:
            return False
        if self.needs_event:  # pragma: no cover - CUDA only
            # Copies the consumer queued on the current stream were queued before this point.
            self.event = torch.cuda.Event()
            self.event.record()
            self.needs_event = False
        if self.event is not None:
            if not self.event.query():
                return False
            self.event = None
        return True


def _new_slot(sid: int, per: int, size: tuple[int, int], data_bytes: int, shared: bool, pin: bool) -> _Slot:
    h, w = size
    images = torch.empty((per, 3, h, w), dtype=torch.uint8)
    data = torch.empty(data_bytes, dtype=torch.uint8) if data_bytes else None
    if shared:
        images.share_memory_()
        if data is not None:
            data.share_memory_()
    slot = _Slot(sid, images, data)
    if pin and torch.cuda.is_available():
        # Page-lock the shared buffer in place (shared *and* pinned), so the
        # host-to-device copy is asynchronous and needs no staging copy.
        for t in (images, data):
            if t is None:
                continue
            try:
                err = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.numel(), 0)
                if int(err) == 0:
                    slot.registered.append(t.data_ptr())
            except Exception:  # pragma: no cover - depends on the CUDA runtime
                pass
    slot.baseline = _use_count(images)
    slot.data_baseline = _use_count(data) if data is not None else 0
    return slot


def _unregister(slot: _Slot) -> None:
    for ptr in slot.registered:  # pragma: no cover - CUDA only
        try:
            torch.cuda.cudart().cudaHostUnregister(ptr)
        except Exception:
            pass
    slot.registered.clear()


# ---------------------------------------------------------------------------------------------
# Filling a batch (runs in the workers, or in the main process with workers=0)


class _Filler:
    """Decodes the records of one batch into a slot; owns the per-process scratch buffer."""

    def __init__(self, ds: PreparedDataset) -> None:
        self.ds = ds
        self.scratch = np.empty(0, dtype=np.uint8)

    def _gather(self, off: np.ndarray, ln: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The records' bytes back to back (one concatenate from the memmap)."""
        mm = self.ds.data()
        total = int(ln.sum())
        if out is None:
            if len(self.scratch) < total:
                self.scratch = np.empty(max(total, 2 * len(self.scratch)), dtype=np.uint8)
            out = self.scratch
        if total:
            np.concatenate([mm[o : o + n] for o, n in zip(off.tolist(), ln.tolist())], out=out[:total])
        return out[:total]

    def fill(self, idx: np.ndarray, n_cpu: int, images: torch.Tensor, data: torch.Tensor | None) -> None:
        """Decode ``idx[:n_cpu]`` into ``images[:n_cpu]``; copy the bytes of ``idx[n_cpu:]`` into
        ``data`` (for the device decoder)."""
        ds = self.ds
        h, w = ds.image_size
        n = len(idx)
        if ds.encoding == "raw":
            if n:
                mm = ds.data().reshape(-1, h, w, 3)  # all records are H×W×3 uint8
                images[:n].copy_(torch.from_numpy(mm[idx]).permute(0, 3, 1, 2))  # N×H×W×3 -> N×3×H×W
            return
        off, ln = ds.index[idx, 0], ds.index[idx, 1]
        if n_cpu:
            buf = torch.from_numpy(self._gather(off[:n_cpu], ln[:n_cpu]))
            ends = np.cumsum(ln[:n_cpu]).tolist()
            start = 0
            for j, end in enumerate(ends):
                try:
                    img = decode_jpeg_rgb(buf[start:end])
                except RuntimeError as e:
                    raise ds.damaged(int(idx[j]), e) from None
                if img.shape != (3, h, w):
                    raise ds.damaged(int(idx[j]), ValueError(f"decoded to {'×'.join(map(str, img.shape))}, "
                                                             f"expected 3×{h}×{w}"))
                images[j].copy_(img)
                start = end
        if n_cpu < n:
            assert data is not None
            self._gather(off[n_cpu:], ln[n_cpu:], out=data.numpy())


_ORPHAN_POLL_S = 1.0  # how often an idle worker checks that its parent is alive


def _worker_main(ds: PreparedDataset, tasks: Any, results: Any) -> None:
    init_worker()
    # torch looks a received shared buffer up in its cache of buffers already mapped, which fork
    # copied from the parent: a hit would return the parent's mapping as inherited (absent where
    # it was page-locked) instead of mapping the buffer afresh.
    from torch.multiprocessing import reductions

    reductions.shared_cache.clear()
    filler = _Filler(ds)
    known: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    parent = os.getppid()
    while True:
        # A parent killed outright (SIGKILL, the OOM killer) never sends the stop message: a worker
        # blocked on its queue would live on, holding its shared buffers. Wake up now and then and
        # leave once the parent is gone (re-parented workers see another parent pid).
        try:
            task = tasks.get(timeout=_ORPHAN_POLL_S)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if task is None:
            return
        gen, bid, sid, new_buffers, idx, n_cpu = task
        if new_buffers is not None:
            known[sid] = new_buffers
        try:
            images, data = known[sid]
            filler.fill(idx, n_cpu, images, data)
            results.put((gen, bid, None))
        except UserError as e:  # a damaged record: one line in the main process
            results.put((gen, bid, ("user", str(e))))
        except Exception as e:  # sent back and raised in the main process
            results.put((gen, bid, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class _Pool:
    """Worker processes, one task queue each (batches go round-robin, like DataLoader's), one
    result queue. The pool lives as long as its loader (every epoch reuses it, like DataLoader's
    ``persistent_workers``).

    Batch buffers always travel through the task queue (torch shares their memory, it does not
    copy it), the first time a worker is to fill one; none is inherited through ``fork``. A buffer
    page-locked for the GPU (``cudaHostRegister``) is not carried into a forked child as it was
    (the CUDA driver excludes page-locked ranges from ``fork``), so a worker writing into an
    inherited one would crash or write into memory the GPU no longer reads."""

    def __init__(self, ds: PreparedDataset, workers: int) -> None:
        from alexnet.data import jpeg

        jpeg.backend()  # import the codec library once, before the fork, not in every worker
        # torch registers its reductions with multiprocessing when it is imported: the tensors put
        # on these queues travel as shared memory, whatever the context.
        ctx = context()
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(workers)]
        self.known: list[set[int]] = [set() for _ in range(workers)]
        self.procs = [ctx.Process(target=_worker_main, args=(ds, q, self.results), daemon=True) for q in self.tasks]
        for p in self.procs:
            p.start()

    def submit(self, gen: int, bid: int, slot: _Slot, idx: np.ndarray, n_cpu: int) -> None:
        w = bid % len(self.tasks)
        new = None
        if slot.id not in self.known[w]:
            new = (slot.images, slot.data)
            self.known[w].add(slot.id)
        self.tasks[w].put((gen, bid, slot.id, new, idx, n_cpu))

    def get(self) -> tuple[int, int, str | None]:
        while True:
            try:
                return self.results.get(timeout=2.0)
            except queue.Empty:
                for i, p in enumerate(self.procs):
                    if not p.is_alive():
                        raise RuntimeError(f"loader worker {i} died (exit code {p.exitcode}); out of memory? "
                                           "try fewer --workers") from None

    def close(self) -> None:
        for q in self.tasks:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for q in [*self.tasks, self.results]:
            q.close()
            q.cancel_join_thread()


# ---------------------------------------------------------------------------------------------


class BatchLoader:
    """Iterates Batches of one epoch.

    ``batch_size`` is the global batch; with ``world_size`` processes each yields its share.
    Training (``shuffle=True``) drops the last partial batch; evaluation keeps every sample
    exactly once (no padding, no duplicates). ``start_batch`` skips ahead inside an epoch
    (exact resume). ``workers`` processes decode (-1: automatic, 0: in the main process).

    ``decode``: where JPEG records are decoded: ``"cpu"`` (the workers; the default), ``"cuda"``
    (nvJPEG in the main process, the workers only gather bytes) or ``"auto"`` (on CUDA, each
    batch split between the two; ``gpu_fraction`` overrides the split). With a ``device``, or
    whenever part of a batch is decoded on the GPU, ``Batch.images`` is on that device;
    otherwise it is a CPU tensor (page-locked with ``pin_memory`` on a CUDA machine).

    The images of a batch are views of a reused buffer: they stay valid as long as a tensor on
    them is alive (the buffer is not reused before), so keeping batches is safe, only costlier.

    The worker processes start with the first iteration and serve every later epoch (a small
    dataset does not pay their start-up per epoch); :meth:`close` (or dropping the loader) stops
    them and frees the buffers.
    """

    def __init__(
        self,
        ds: PreparedDataset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        workers: int = -1,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        limit_batches: int = 0,
        subset: int = 0,
        decode: str = "cpu",
        device: torch.device | str | None = None,
        gpu_fraction: float | None = None,
        prefetch: int = 2,
    ) -> None:
        if batch_size % world_size:
            raise UserError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        if decode not in DECODE_MODES:
            raise UserError(f"decode {decode!r}: accepted: {', '.join(DECODE_MODES)}")
        self.ds = ds
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.workers = default_workers(ds.encoding) if workers < 0 else workers
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory
        self.limit_batches = limit_batches
        self.n = min(subset, len(ds)) if subset > 0 else len(ds)
        self.epoch = 0
        self.prefetch = max(1, prefetch)
        self.device = torch.device(device) if device is not None else None
        # Where the device share of each batch is decoded. Tests set decode_device to "cpu" (with
        # a gpu_fraction) to run this path's code on a machine without a GPU.
        self.decode_device: torch.device | None = None
        self.gpu_fraction = 0.0
        cuda_ok = torch.cuda.is_available() and (self.device is None or self.device.type == "cuda")
        if decode == "cuda" and not cuda_ok:
            where = "this machine has no CUDA GPU" if not torch.cuda.is_available() else f"training runs on {self.device}"
            raise UserError(f"decode=cuda: no CUDA device to decode on ({where}); use decode=cpu or auto")
        if decode == "cuda" and ds.encoding != "jpeg":
            raise UserError(f"decode=cuda: {ds.root} ({ds.split}) stores raw pixels, not JPEG: there is nothing to decode; "
                            "use decode=cpu")
        if decode != "cpu" and ds.encoding == "jpeg":
            if cuda_ok:
                self.decode_device = self.device or torch.device("cuda", torch.cuda.current_device())
                if gpu_fraction is not None:
                    self.gpu_fraction = float(gpu_fraction)
                elif decode == "cuda":
                    self.gpu_fraction = 1.0
                else:
                    self.gpu_fraction = _AUTO_GPU_IMG_S / (_AUTO_GPU_IMG_S + self.workers * _AUTO_CPU_IMG_S_PER_WORKER)
        if not 0.0 <= self.gpu_fraction <= 1.0:
            raise UserError(f"gpu_fraction {self.gpu_fraction}: must be between 0 and 1")
        self._slots: dict[int, _Slot] = {}
        self._pool: _Pool | None = None
        self._gen = 0  # iterations started; results of an abandoned one are told apart by it
        self._pending: dict[tuple[int, int], _Slot] = {}  # (iteration, batch) handed to a worker, not yet reported
        if self.workers > 0 and len(ds):
            check_shared_memory(self.shared_bytes() * local_world_size(),
                                f"the batch buffers of {self.workers} loader workers"
                                + (f" in each of this node's {local_world_size()} processes" if local_world_size() > 1 else ""))

    # -- which samples ---------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[np.ndarray]:
        """This process's index arrays, one per step of the epoch."""
        if self.shuffle:
            order = epoch_permutation(self.n, self.seed, self.epoch)
            nb = self.n // self.batch_size  # drop_last: every step sees a full batch
            batches = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(nb)]
        else:
            # Evaluation: this process's contiguous shard, in order, every sample once.
            mine = shard(np.arange(self.n), self.rank, self.world_size)
            per = max(1, self.batch_size // self.world_size)
            return [mine[i : i + per] for i in range(0, len(mine), per)]
        if self.limit_batches > 0:
            batches = batches[: self.limit_batches]
        per = self.batch_size // self.world_size
        return [b[self.rank * per : (self.rank + 1) * per] for b in batches]

    def __len__(self) -> int:
        return len(self.global_batches())

    # -- buffers -----------------------------------------------------------------------------------

    def _per(self) -> int:
        return self.batch_size // self.world_size if self.shuffle else max(1, self.batch_size // self.world_size)

    def _data_bytes(self, per: int) -> int:
        if self.gpu_fraction <= 0 or self.ds.encoding != "jpeg" or not len(self.ds):
            return 0
        n_dev = per - self._n_cpu(per)
        return int(np.sort(self.ds.index[:, 1])[-n_dev:].sum()) if n_dev else 0

    def _n_cpu(self, n: int) -> int:
        return n - int(round(n * self.gpu_fraction)) if self.ds.encoding == "jpeg" else n

    def shared_bytes(self) -> int:
        """Shared memory the worker buffers take at steady state: the batches in flight
        (workers × prefetch), the one being consumed and one spare."""
        per = self._per()
        h, w = self.ds.image_size
        return (self.workers * self.prefetch + 2) * (per * 3 * h * w + self._data_bytes(per))

    def _take_slot(self, shared: bool) -> _Slot:
        """A free slot, made when none is free."""
        for s in self._slots.values():
            if s.free():
                s.busy = True
                return s
        per = self._per()
        pin = self.pin_memory or (self.device is not None and self.device.type == "cuda")
        s = _new_slot(len(self._slots), per, self.ds.image_size, self._data_bytes(per), shared, pin)
        self._slots[s.id] = s
        s.busy = True
        return s

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (none before the first iteration or after close)."""
        return [p.pid for p in self._pool.procs] if self._pool is not None else []  # type: ignore[misc]

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for s in self._pending.values():  # no worker writes into them any more
            s.busy = False
        self._pending.clear()

    def close(self) -> None:
        """Stop the workers and release the batch buffers (and their CUDA page-locking)."""
        self._stop_pool()
        for s in self._slots.values():
            _unregister(s)
        self._slots.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- iteration -------------------------------------------------------------------------------

    def _deliver(self, slot: _Slot, idx: np.ndarray) -> Batch:
        n = len(idx)
        n_cpu = self._n_cpu(n)
        labels = torch.from_numpy(self.ds.labels[idx].astype(np.int64))
        indices = torch.from_numpy(idx.astype(np.int64))
        if (self.pin_memory or (self.device is not None and self.device.type == "cuda")) and torch.cuda.is_available():
            # Page-locked, so that the consumer's copies to the GPU are queued without the host
            # waiting: from pageable memory, even a non_blocking copy first waits for the stream.
            labels, indices = labels.pin_memory(), indices.pin_memory()
        images = slot.images[:n]
        target = self.device
        if n_cpu < n:
            target = self.decode_device
        if target is None or (target.type == "cpu" and n_cpu == n):
            slot.needs_event = bool(slot.registered)
            slot.busy = False
            return Batch(images, labels, indices)
        assert target is not None
        out = torch.empty_like(images, device=target) if n_cpu < n else None
        if out is None:
            out = images.to(target, non_blocking=True)
        elif n_cpu:
            out[:n_cpu].copy_(images[:n_cpu], non_blocking=True)
        if n_cpu < n:
            assert slot.data is not None
            ln = self.ds.index[idx[n_cpu:], 1]
            total = int(ln.sum())
            records = list(slot.data[:total].split(ln.tolist()))  # views: one per record
            out[n_cpu:] = torch.stack(decode_jpegs_rgb(records, target))
            del records
        if target.type == "cuda":
            slot.event = torch.cuda.Event()
            slot.event.record()
        slot.busy = False
        return Batch(out, labels, indices)

    def iterate(self, start_batch: int = 0) -> Iterator[Batch]:
        batches = self.global_batches()[start_batch:]
        if not batches:
            return iter(())
        if self.workers == 0:
            return self._iterate_inline(batches)
        return self._iterate_workers(batches)

    def _iterate_inline(self, batches: list[np.ndarray]) -> Iterator[Batch]:
        filler = _Filler(self.ds)
        for idx in batches:
            slot = self._take_slot(shared=False)
            try:
                filler.fill(idx, self._n_cpu(len(idx)), slot.images, slot.data)
            except BaseException:
                slot.busy = False
                raise
            yield self._deliver(slot, idx)

    def _iterate_workers(self, batches: list[np.ndarray]) -> Iterator[Batch]:
        if self._pool is None:
            # Started before any buffer exists; buffers reach the workers through their queues.
            self._pool = _Pool(self.ds, self.workers)
        pool = self._pool
        self._gen += 1
        gen = self._gen
        depth = self.workers * self.prefetch
        in_flight: dict[int, _Slot] = {}
        done: set[int] = set()
        sent = 0
        try:
            for bid in range(len(batches)):
                if gen != self._gen:
                    raise RuntimeError("this loader was iterated again before this iteration finished")
                while sent < len(batches) and sent - bid < depth:
                    slot = self._take_slot(shared=True)
                    in_flight[sent] = self._pending[(gen, sent)] = slot
                    pool.submit(gen, sent, slot, batches[sent], self._n_cpu(len(batches[sent])))
                    sent += 1
                while bid not in done:
                    try:
                        rgen, rid, err = pool.get()
                    except Exception:
                        self._stop_pool()  # a worker died: the next iteration starts a new pool
                        raise
                    reported = self._pending.pop((rgen, rid), None)
                    if rgen != gen:  # a batch of an abandoned iteration: its buffer is free again
                        if reported is not None:
                            reported.busy = False
                        continue
                    if isinstance(err, tuple):
                        raise DatasetError(err[1])
                    if err is not None:
                        raise RuntimeError(f"loader worker failed on batch {rid}: {err}")
                    done.add(rid)
                done.discard(bid)
                slot = in_flight.pop(bid)
                yield self._deliver(slot, batches[bid])
        finally:
            # Batches still being filled (the consumer stopped early, or an error) keep their
            # buffers until the workers report them, in a later iteration; the workers themselves
            # stay for the next epoch.
            for rid, s in in_flight.items():
                if (gen, rid) not in self._pending:
                    s.busy = False

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate()
