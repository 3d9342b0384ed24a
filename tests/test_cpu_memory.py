"""keep_freed_cpu_memory: glibc's malloc keeps freed activations for the next step."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from alexnet.engine.device import keep_freed_cpu_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_applies_on_glibc():
    assert keep_freed_cpu_memory() is True


def test_cpu_training_sets_it_up(tmp_path):
    """alexnet train on the CPU applies it (a subprocess: it changes the process's malloc)."""
    code = ("import alexnet.engine.device as d, alexnet.engine.train as t\n"
            "calls = []\n"
            "t.keep_freed_cpu_memory = lambda: calls.append(1) or True\n"
            "from alexnet import config\n"
            f"cfg = config.resolve('demo', {{'device': 'cpu', 'epochs': 1, 'max_steps_per_epoch': 1, 'progress': False}}, cuda=lambda s: False)\n"
            f"t.run(cfg, {str(tmp_path / 'run')!r}, log=lambda s: None)\n"
            "assert calls == [1], calls\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
