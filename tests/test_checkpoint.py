"""Untrusted files and failed writes: crafted checkpoints never run their code, damaged weights are
one-line errors, and a save that fails leaves the previous checkpoint usable."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest
import torch

from alexnet.cli import main
from alexnet.data.sources import synthetic
from alexnet.engine import checkpoint as ckpt


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.build(tmp_path_factory.mktemp("ckpt") / "ds", size=36, train_per_class=10, val_per_class=3)


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "lenet5", "--out", str(out), "--epochs", "1", "--batch-size", "16",
            "--workers", "0", "--no-progress", *extra]


@pytest.fixture(scope="module")
def finished_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(train_args(data, out, "--save-every", "2")) == 0
    return out


class _RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def craft(path: Path, marker: Path, fmt: str) -> Path:
    payload = {"model": {"w": torch.zeros(1)}, "run": _RunsCode(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "zip":  # torch.save's format, pickle inside a zip
        torch.save(payload, path)
    else:  # a bare pickle stream (torch's legacy format)
        path.write_bytes(pickle.dumps(payload))
    # the crafted file really would run code if unpickled without restrictions
    probe = path.parent / "probe"
    pickle.loads(pickle.dumps(_RunsCode(probe)))
    assert probe.exists()
    probe.unlink()
    return path


def one_line_error(err: str) -> str:
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("fmt", ["zip", "pickle"])
def test_train_resume_refuses_a_crafted_checkpoint_without_running_it(data: Path, tmp_path: Path, fmt: str, capsys) -> None:
    out = tmp_path / "run"
    marker = tmp_path / "code-ran"
    evil = craft(out / "checkpoints" / "ckpt-999999999.pt", marker, fmt)
    capsys.readouterr()
    rc = main(train_args(data, out, "--resume"))
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert str(evil) in line and "refused to load" in line
    assert not marker.exists()


def test_every_loader_refuses_crafted_files(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "code-ran"
    evil = craft(tmp_path / "evil.pt", marker, "zip")
    with pytest.raises(ckpt.CheckpointError, match="refused to load"):
        ckpt.load_checkpoint(evil)
    with pytest.raises(ckpt.CheckpointError, match="refused to load"):
        ckpt.load_weights(evil)
    # evaluate given the crafted file as weights
    rc = main(["evaluate", str(evil), "--data", "synthetic"])
    assert rc == 2
    assert "refused" in one_line_error(capsys.readouterr().err)
    assert not marker.exists()


def test_evaluate_reports_a_corrupt_weights_file(finished_run: Path, data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "copy"
    run.mkdir()
    good = (finished_run / ckpt.WEIGHTS).read_bytes()
    (run / ckpt.WEIGHTS).write_bytes(good[:8] + b"\xff" * 40 + good[48:200])  # damaged header, truncated
    rc = main(["evaluate", str(run), "--data", str(data)])
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert str(run / ckpt.WEIGHTS) in line and "safetensors" in line


def test_load_weights_reads_weights_and_checkpoints(finished_run: Path) -> None:
    sd_w, meta_w = ckpt.load_weights(finished_run / ckpt.WEIGHTS)
    sd_c, meta_c = ckpt.load_weights(ckpt.latest_checkpoint(finished_run))  # type: ignore[arg-type]
    assert meta_w["model"] == meta_c["model"] == "lenet5"
    assert sd_w.keys() == sd_c.keys()
    for k in sd_w:  # the final checkpoint is the end of the run: the same weights
        assert torch.equal(sd_w[k], sd_c[k])


def test_a_failed_save_leaves_the_previous_checkpoint_usable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    first = ckpt.save_checkpoint(run, {"w": torch.arange(5.0)}, step=1)
    real_save = torch.save

    def disk_full(obj, f, *a, **k):  # type: ignore[no-untyped-def]
        real_save(obj, f, *a, **k)  # the bytes go out, then the disk fills before the end
        f.truncate(7)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.save_checkpoint(run, {"w": torch.arange(6.0)}, step=2)
    msg = str(e.value)
    assert "ckpt-000000002.pt" in msg and "No space left" in msg and f"previous checkpoint {first} is intact" in msg
    assert ckpt.list_checkpoints(run) == [first]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [first.name]  # no temporary left
    assert torch.equal(ckpt.load_checkpoint(first)["w"], torch.arange(5.0))


def test_a_failed_save_during_training_stops_cleanly_and_the_run_resumes(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def fails_second_time(obj, f, *a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", fails_second_time)
    rc = main(train_args(data, out, "--save-every", "2", "--epochs", "2"))
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2 and "could not write the checkpoint" in line
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["ckpt-000000002.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    assert main(train_args(data, out, "--save-every", "2", "--epochs", "2", "--resume")) == 0
    assert (out / ckpt.WEIGHTS).is_file()


def test_checkpoint_rotation_keeps_the_newest(tmp_path: Path) -> None:
    for step in (3, 10, 7, 12):
        ckpt.save_checkpoint(tmp_path, {"step": step}, step, keep=3)
    assert [ckpt.load_checkpoint(p)["step"] for p in ckpt.list_checkpoints(tmp_path)] == [7, 10, 12]
    (tmp_path / "checkpoints" / ".ckpt-000000013.pt.abc.tmp").write_bytes(b"torn")
    assert ckpt.latest_checkpoint(tmp_path).name == "ckpt-000000012.pt"  # type: ignore[union-attr]
    ckpt.remove_stale_temporaries(tmp_path)
    assert len(list((tmp_path / "checkpoints").iterdir())) == 3


def test_unreadable_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    p = tmp_path / "ckpt-000000001.pt"
    p.write_bytes(b"\x00not a checkpoint" * 4)
    with pytest.raises(ckpt.CheckpointError, match="ckpt-000000001.pt"):
        ckpt.load_checkpoint(p)
    torch.save([1, 2, 3], p)
    with pytest.raises(ckpt.CheckpointError, match="expected a dict"):
        ckpt.load_checkpoint(p)


def test_atomic_write_gives_ordinary_file_permissions(tmp_path: Path) -> None:
    # A temporary file from mkstemp is 0600: weights shared with other users must not stay so.
    old = os.umask(0o022)
    try:
        ckpt.atomic_write(tmp_path / "w.bin", lambda f: f.write(b"abc"))
    finally:
        os.umask(old)
    assert (tmp_path / "w.bin").read_bytes() == b"abc"
    assert (tmp_path / "w.bin").stat().st_mode & 0o777 == 0o644
