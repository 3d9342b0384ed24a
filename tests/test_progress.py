"""Progress output: a redrawn bar only on a terminal; in a log file one line per epoch plus a line
every ALEXNET_LOG_EVERY seconds, never a carriage return."""

import io
import os
import subprocess
import sys

import pytest

from alexnet.errors import UserError
from alexnet.progress import ENV, Progress, log_every


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_plain_lines_every_interval() -> None:
    out = io.StringIO()
    p = Progress(10, "epoch 1/2", "batch", file=out, every=1e-9)
    for _ in range(10):
        p.update(1)
        p.set_postfix(loss="0.500")
    p.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 10
    assert lines[0].startswith("epoch 1/2: 1/10 batch (10%), ")
    assert lines[-1].startswith("epoch 1/2: 10/10 batch (100%), ") and lines[-1].endswith("loss=0.500")


def test_no_line_before_the_interval_has_passed() -> None:
    out = io.StringIO()
    with Progress(1000, "train", "img", file=out, every=3600) as p:
        for _ in range(1000):
            p.update(1)
    assert out.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar() -> None:
    term = FakeTerminal()
    with Progress(5, "epoch 1/1", "batch", file=term, every=1e-9) as p:
        for _ in range(5):
            p.update(1)
    assert "\r" in term.getvalue() and "5/5" in term.getvalue()


def test_disabled_prints_nothing() -> None:
    for f in (io.StringIO(), FakeTerminal()):
        with Progress(5, "x", file=f, every=1e-9, enabled=False) as p:
            p.update(5)
        assert f.getvalue() == ""


def test_bytes_are_shown_scaled() -> None:
    out = io.StringIO()
    with Progress(4 * 2**20, "a.tar", "B", file=out, every=1e-9, unit_scale=True) as p:
        p.update(2**20)
    assert out.getvalue().startswith("a.tar: 1.00MB/4.00MB (25%), ")


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert log_every() == 30.0
    monkeypatch.setenv(ENV, "2.5")
    assert log_every() == 2.5
    monkeypatch.setenv(ENV, "soon")
    with pytest.raises(UserError, match="ALEXNET_LOG_EVERY='soon'"):
        log_every()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    from alexnet.data.sources import synthetic

    return synthetic.build(tmp_path_factory.mktemp("progress") / "ds", size=36, train_per_class=10, val_per_class=2)


def _train(data, tmp_path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "alexnet", "train", "--data", str(data), "--model", "alexnet-cifar",
           "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "16", "--workers", "0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_train_into_a_pipe_writes_no_carriage_returns_and_few_lines(data, tmp_path) -> None:
    r = _train(data, tmp_path, env={ENV: "3600"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\r" not in r.stdout and "\r" not in r.stderr
    # the start line, one line per epoch, the final line (plus any warnings): nothing per step
    assert len(r.stdout.splitlines()) <= 6, r.stdout
    assert sum(line.startswith("epoch ") for line in r.stdout.splitlines()) == 2


def test_train_log_every_prints_the_periodic_line(data, tmp_path) -> None:
    r = _train(data, tmp_path, "--log-every", "0.000001")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\r" not in r.stdout
    periodic = [line for line in r.stdout.splitlines() if line.startswith("epoch 1/2: ")]
    assert len(periodic) == 6, r.stdout  # one per step at this interval
    assert periodic[-1].startswith("epoch 1/2: 6/6 batch (100%), ") and "loss=" in periodic[-1]


def test_a_bad_log_every_is_one_line_exit_2(data, tmp_path) -> None:
    r = _train(data, tmp_path, "--log-every", "-1")
    assert r.returncode == 2
    assert "--log-every -1" in r.stderr and "Traceback" not in r.stderr


def test_prepare_into_a_log_writes_lines_not_bars(tmp_path, monkeypatch, capsys) -> None:
    from fakes_data import jpeg

    from alexnet.data import prepare as P

    for split, n in (("train", 6), ("val", 2)):
        for c, color in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
            d = tmp_path / "src" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}.jpg").write_bytes(jpeg(40, 30, color))
    monkeypatch.setenv(ENV, "0.000001")
    P.prepare(tmp_path / "src", tmp_path / "out", size=16, workers=1, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert any(line.startswith("train: ") and "img (" in line for line in err.splitlines()), err


def test_evaluate_into_a_log_writes_lines_not_bars(data, tmp_path, monkeypatch, capsys) -> None:
    from alexnet import models
    from alexnet.cli import main
    from alexnet.engine.checkpoint import save_weights

    meta = {"model": "alexnet-cifar", "model_options": {}, "num_classes": 10, "input_size": 32,
            "input_norm": "mean_image_std", "data": str(data), "image_size": [36, 36]}
    save_weights(models.create("alexnet-cifar", 10), tmp_path / "w.safetensors", meta)
    monkeypatch.setenv(ENV, "0.000001")
    assert main(["evaluate", str(tmp_path / "w.safetensors"), "--batch-size", "4", "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("evaluate: ")]
    assert len(lines) == 5 and lines[-1].startswith("evaluate: 5/5 batch (100%)"), err  # 20 val images, batches of 4
    assert main(["evaluate", str(tmp_path / "w.safetensors"), "--workers", "0", "--quiet"]) == 0
    assert "evaluate: " not in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [(["train", "--out", "x", "--no-progress"], "--no-progress"),
                                        (["evaluate", "run", "--quiet"], "--quiet"),
                                        (["experiment", "lrn", "--out", "x"], "no --progress")])
def test_log_every_where_nothing_is_printed_is_refused(argv, flag, monkeypatch, capsys) -> None:
    from alexnet.cli import main

    monkeypatch.delenv(ENV, raising=False)
    assert main([*argv, "--log-every", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"alexnet {argv[0]}: error: --log-every has no effect with {flag}: this command then prints no progress"
    assert ENV not in os.environ
