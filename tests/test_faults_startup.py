"""Start-up, with real processes: the parser loads no torch (``alexnet --help`` answers at once), a
signal at any moment of start-up ends in one line and exit 143/130 (never a traceback, never lost),
and ``alexnet demo`` stops like ``train``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_building_the_parser_and_every_command_help_load_no_torch() -> None:
    code = r"""
import contextlib, io, sys
from alexnet.cli import COMMANDS, build_parser, main
build_parser()
assert "torch" not in sys.modules, "building the parser imported torch"
for name in [None, *COMMANDS]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["--help"] if name is None else [name, "--help"])
        except SystemExit as e:
            assert e.code == 0, (name, e.code)
    assert "torch" not in sys.modules, f"alexnet {name} --help imported torch"
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_train_help_names_every_model() -> None:
    import contextlib
    import io

    from alexnet import models
    from alexnet.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["train", "--help"])
    text = "".join(out.getvalue().split())  # argparse wraps lines at hyphens too
    for name in models.names():
        assert name in text, name


def _tree(root: Path) -> Path:
    g = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for c in ("c0", "c1"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(g.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_a_signal_at_any_moment_of_start_up_ends_in_one_line(tmp_path: Path) -> None:
    # prepare imports numpy, torch and the sources in its first seconds: a signal then is recorded
    # and acted on once the import is done. Never a traceback, never a run that ignores it.
    tree = _tree(tmp_path / "tree")
    delays = [0.05, 0.15, 0.3, 0.5, 0.7, 0.9, 1.2, 1.6, 2.2]
    seen = set()
    for i, delay in enumerate(delays):
        sig = signal.SIGINT if i % 3 == 2 else signal.SIGTERM
        out = tmp_path / f"out{i}"
        p = subprocess.Popen([sys.executable, "-m", "alexnet", "prepare", str(tree), "--out", str(out), "--workers", "0",
                              "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        time.sleep(delay)
        finished_first = p.poll() is not None
        if not finished_first:
            p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        assert "Traceback" not in err, (delay, err[-3000:])
        if finished_first:
            assert p.returncode == 0, err[-2000:]
            continue
        code = 143 if sig == signal.SIGTERM else 130
        if p.returncode == -sig:  # before Python ran any of alexnet (interpreter start): nothing written
            assert not out.exists() and not Path(f"{out}.partial").exists()
            continue
        assert p.returncode == code, (delay, p.returncode, err[-2000:])
        lines = [s for s in err.splitlines() if s.strip()]
        assert lines == [f"alexnet prepare: {'terminated' if code == 143 else 'interrupted'}"], (delay, err)
        # Stopped before its commit, or (a signal during the commit itself) after it, complete.
        assert not out.exists() or (out / "meta.json").is_file(), "a signalled prepare left a torn dataset"
        seen.add(code)
        if Path(f"{out}.partial").exists():  # what it kept resumes
            r = subprocess.run([sys.executable, "-m", "alexnet", "prepare", str(tree), "--out", str(out), "--workers",
                                "0", "--quiet"], capture_output=True, text=True, env=ENV, timeout=120)
            assert r.returncode == 0, r.stderr[-2000:]
    assert seen == {130, 143}, "no delay reached the command: the test measured nothing"


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_demo_stops_like_train_in_one_line(tmp_path: Path, sig: int, code: int, word: str) -> None:
    out = tmp_path / "demo"
    p = subprocess.Popen([sys.executable, "-m", "alexnet", "demo", "--out", str(out), "--epochs", "50", "--no-progress",
                          "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**ENV, "ALEXNET_CACHE": str(tmp_path / "cache")})
    t0 = time.time()
    while not (out / "config.yaml").exists():  # the run folder is written: training starts
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.time() - t0 < 300, "the demo never started training"
        time.sleep(0.1)
    time.sleep(3)  # into the first steps, where the training loop's own handler stops it
    p.send_signal(sig)
    _, err = p.communicate(timeout=300)
    assert p.returncode == code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert [s for s in err.splitlines() if s.strip()] == [f"alexnet demo: {word}"], err[-3000:]
