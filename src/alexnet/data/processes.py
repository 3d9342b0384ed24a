"""The data layer's worker processes: how they start, how many CPUs they may use, and what each
does first. One policy for every pool: the loader's workers (:mod:`alexnet.data.loader`),
``prepare``'s (:mod:`alexnet.data.workers`) and the benchmark fixtures' (:mod:`alexnet.perf.fixtures`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from multiprocessing.context import BaseContext

import torch

from alexnet.signals import worker_signals


def context() -> BaseContext:
    """The start method of every worker pool: fork on Linux, spawn elsewhere.

    fork: workers start in milliseconds and inherit the imports and what the parent has loaded
    (a dataset's index is inherited, not pickled). They run Pillow, numpy, the JPEG codecs and
    torch on one thread (:func:`init_worker`), so no thread pool is entered after the fork.
    Elsewhere spawn, as CPython itself chooses on macOS, whose system libraries are not safe
    to use in a forked child."""
    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (``taskset``, a container's or a batch
    scheduler's cpuset), which can be far fewer than the machine has; the machine's count where
    the platform has no affinity mask."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def init_worker() -> None:
    """First thing in every worker process (prepare's pool, the loader's workers, the benchmark
    fixtures' pool): one torch thread, as in DataLoader's workers (parallelism comes from the
    processes, and a forked child never enters the thread pool fork did not copy); Ctrl-C left
    to the main process, SIGTERM ends the worker (:func:`alexnet.signals.worker_signals`)."""
    torch.set_num_threads(1)
    worker_signals()
