"""The one timing helper: device synchronisation around a wall clock, per-call times of a step,
loader throughput inside epochs, and a time limit for a measurement that may hang."""

from __future__ import annotations

import signal
import statistics
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, *, iters: int, repeats: int = 3, warmup: int = 0,
               clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds per call of ``fn``, one sample per repeat: the mean of ``iters`` back-to-back calls
    after ``warmup`` untimed ones, the device synchronised at both ends of each repeat. ``clock``:
    the wall clock, or ``time.thread_time`` for single-threaded CPU work on a shared machine (the
    thread's CPU time, which other jobs move much less)."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(iters):
            fn()
        sync(device)
        samples.append((clock() - t0) / iters)
    return samples


def time_steps(step: Callable[[], object], device: torch.device, budget_s: float, warmup: int, rounds: int = 3,
               min_steps: int = 2) -> dict[str, Any]:
    """Median over ``rounds`` of the mean time per step, each round about ``budget_s / rounds``
    (the number of steps per round is sized from one timed step after the warm-up)."""
    for _ in range(warmup):
        step()
    one = time_calls(step, device, iters=1, repeats=1)[0]
    n = max(min_steps, int(budget_s / rounds / max(one, 1e-6)))
    samples = time_calls(step, device, iters=n, repeats=rounds)
    return {"s_per_step": statistics.median(samples), "steps_per_round": n, "rounds": rounds,
            "samples_ms": [round(s * 1e3, 3) for s in samples]}


def images_per_second(batches: Iterable[tuple[Any, int]], warmup: int, timed: int, device: torch.device) -> float:
    """Images per second over ``timed`` (item, batch size) pairs after ``warmup`` untimed ones (which
    drain the prefetch queue filled while the consumer was not yet asking)."""
    n = 0
    t0 = 0.0
    for i, (x, bs) in enumerate(batches):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        if i >= warmup:
            n += bs
        if i + 1 == warmup + timed:
            break
        del x
    sync(device)
    if n == 0:
        raise ValueError("no batches were timed; lower the batch size or the warm-up, or give more images")
    return n / (time.perf_counter() - t0)


def steady_state(make_iter: Callable[[int], Iterator[Any]], consume: Callable[[Any, int], int], skip: int,
                 budget_s: float, batches_per_epoch: int, device: torch.device, max_epochs: int = 1000) -> dict[str, Any]:
    """Steady-state throughput inside epochs: each epoch's first ``skip`` batches are untimed (the
    pipeline fills; a queue filled while nobody consumed is drained), then the clock runs to the
    epoch's end or the budget. Also the rate over the whole run after the first skip, epoch
    restarts included. ``consume(batch, epoch)`` returns the batch's images."""
    if batches_per_epoch <= skip:
        raise ValueError(f"an epoch has {batches_per_epoch} batches, none left to time after skipping the first "
                         f"{skip} (workers × prefetch + 1): give more images or fewer workers")
    timed_imgs, timed_s = 0, 0.0
    wall_imgs, wall_t0 = 0, None
    epochs = 0
    deadline = None
    for epoch in range(max_epochs):
        it = make_iter(epoch)
        t_ep, n_ep, nb = None, 0, 0
        try:
            for i, batch in enumerate(it):
                n = consume(batch, epoch)
                nb += 1
                if i == skip - 1:
                    sync(device)
                    t_ep = time.perf_counter()
                    if wall_t0 is None:
                        wall_t0, deadline = t_ep, t_ep + budget_s
                elif i >= skip:
                    n_ep += n
                    if wall_t0 is not None:
                        wall_imgs += n
                    if deadline is not None and n_ep and time.perf_counter() > deadline:
                        break
        finally:
            # Shut the workers down now: our loader's generator, or a DataLoader's iterator.
            close = getattr(it, "close", None) or getattr(it, "_shutdown_workers", None)
            if close is not None:
                close()
        sync(device)
        now = time.perf_counter()
        if t_ep is not None and n_ep:
            timed_imgs += n_ep
            timed_s += now - t_ep
        epochs += 1
        if deadline is not None and now > deadline:
            break
        if nb <= skip:
            raise ValueError(f"epochs of {nb} batches: none left to time after skipping {skip}; give more images")
    if not timed_imgs:
        raise ValueError("no batch was timed")
    steady = timed_imgs / timed_s
    wall_s = time.perf_counter() - wall_t0 if wall_t0 is not None else float("nan")
    restarts = max(0, epochs - 1)
    overhead = (wall_s - wall_imgs / steady) / restarts if restarts else None
    return {"img_per_s": round(steady, 1), "timed_images": timed_imgs, "timed_s": round(timed_s, 2),
            "epochs": epochs, "batches_per_epoch": batches_per_epoch,
            "skipped_batches_per_epoch": skip, "img_per_s_with_restarts": round(wall_imgs / wall_s, 1),
            "epoch_restart_s": round(overhead, 3) if overhead is not None else None}


class TimeLimitExceeded(Exception):
    """A measurement ran past its :func:`time_limit`."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TimeLimitExceeded` in the block after ``seconds`` (None or ≤ 0: no limit).

    A SIGALRM timer: it interrupts Python code and blocking waits (a queue read from a hung loader
    worker, a sleep), not a single C call that never returns to the interpreter. In the main thread
    only (signals are delivered there); elsewhere the block runs without a limit."""
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise TimeLimitExceeded(f"took longer than {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


__all__ = ["TimeLimitExceeded", "images_per_second", "steady_state", "sync", "time_calls", "time_limit", "time_steps"]
