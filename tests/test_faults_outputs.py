"""Outputs and identities, with real processes: no command overwrites a file it did not write, nor
writes into a folder another process holds or into what is not its own kind of folder; exports
go through the one atomic writer (a real full disk leaves the earlier export intact); a model and
a dataset must agree on their classes (evaluate, an ensemble, ``train --resume --data OTHER``).
Each refusal is one line, exit 2, and leaves every file as it was."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_faults import cli, copy_run, drive, ds, image_tree, one_line, run, snapshot, tmpfs, train_args  # noqa: F401 (fixtures)

from alexnet.data.prepare import prepare
from alexnet.report.figures import plot_filters


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock, as a live training run does."""
    code = ("import sys, time\nfrom alexnet.files import lock_folder\nlock = lock_folder(sys.argv[1])\n"
            "print('held', flush=True)\ntime.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_export_and_filters_never_overwrite_a_file_they_did_not_write(run: Path, tmp_path: Path) -> None:
    keep, keep_png = tmp_path / "keep.txt", tmp_path / "keep.png"
    keep.write_text("my notes\n")
    other = copy_run(run, tmp_path / "other")
    plot_filters(torch.randn(6, 3, 5, 5), other / "filters.png")  # a run's figure, as report draws it
    shutil.copy(other / "filters.png", keep_png)
    before = snapshot(other)
    ours, ours_onnx, ours_png = tmp_path / "w.safetensors", tmp_path / "m.onnx", tmp_path / "f.png"
    live = tmp_path / "live"
    live.mkdir()
    holder = _holder(live)
    try:
        r = drive([
            ["export", str(run), "--format", "safetensors", "--out", str(keep)],
            ["export", str(run), "--format", "safetensors", "--out", str(other / "model.safetensors")],
            ["export", str(run), "--format", "safetensors", "--out", str(other / "config.yaml")],
            ["filters", str(run), "--out", str(keep_png)],
            ["filters", str(run), "--out", str(other / "filters.png")],
            ["export", str(run), "--format", "safetensors", "--out", str(live / "w.safetensors"), "--force"],
            ["filters", str(run), "--out", str(live / "f.png"), "--force"],
            ["export", str(run), "--format", "safetensors", "--out", ""],
            # an earlier output of the same command is replaced; --force replaces anything
            ["export", str(run), "--format", "safetensors", "--out", str(ours)],
            ["export", str(run), "--format", "safetensors", "--out", str(ours)],
            ["export", str(run), "--format", "onnx", "--out", str(ours_onnx)],
            ["export", str(run), "--format", "onnx", "--out", str(ours_onnx)],
            ["filters", str(run), "--out", str(ours_png)],
            ["filters", str(run), "--out", str(ours_png)],
            ["export", str(run), "--format", "safetensors", "--out", str(ours_png)],
            ["export", str(run), "--format", "safetensors", "--out", str(keep), "--force"],
            ["evaluate", str(run), "--confusion", str(keep_png), "--workers", "0", "--quiet"],
            ["neighbors", str(run), "--query", "0", "--out", str(keep_png)],
            ["evaluate", str(run), "--confusion", str(ours_png), "--workers", "0", "--quiet"],
        ])
    finally:
        holder.kill()
        holder.wait()
    for case in r[:5]:
        assert "exists and was not written by this command" in one_line(case["err"], case["rc"]), case
        assert "--force" in case["err"]
    for case in r[5:7]:
        assert f"{live}: in use by another alexnet process (pid {holder.pid})" in one_line(case["err"], case["rc"]), case
    assert "--out '': an empty value" in one_line(r[7]["err"], r[7]["rc"])
    assert [c["rc"] for c in r[8:14]] == [0] * 6, [c["err"][-500:] for c in r[8:14]]
    assert "exists and was not written by this command" in one_line(r[14]["err"], r[14]["rc"])  # a filters PNG
    assert r[15]["rc"] == 0, r[15]["err"]
    for case in r[16:19]:  # the confusion matrix and the neighbours' figure: the same rule
        assert "exists and was not written by this command" in one_line(case["err"], case["rc"]), case
    assert keep.read_bytes()[:8] != b"my notes"  # replaced, as asked
    assert keep_png.read_bytes() == (other / "filters.png").read_bytes()
    assert snapshot(other) == before
    assert [p.name for p in live.iterdir() if p.name != ".lock"] == []  # the holder was killed: its lock file stays
    assert not list(tmp_path.glob(".*.tmp"))


def test_report_writes_only_into_a_run_folder(ds: Path, tmp_path: Path) -> None:
    images = image_tree(tmp_path / "images", per_class=2, val_per_class=1)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "report.md").write_text("mine\n")
    copy = shutil.copytree(ds, tmp_path / "ds")
    befores = [snapshot(d) for d in (images, notes, copy)]
    r = drive([["report", str(d)] for d in (images, notes, copy)] + [["report", ""]])
    for case, d in zip(r, (images, notes, copy)):
        assert one_line(case["err"], case["rc"]) == (f"alexnet report: error: {d}: not a run folder (no config.yaml); "
                                                     f"report writes only into a folder 'alexnet train' made")
    assert "argument 2 '': an empty value" in one_line(r[3]["err"], r[3]["rc"])
    assert [snapshot(d) for d in (images, notes, copy)] == befores


def test_train_out_must_be_a_new_or_empty_folder_never_the_dataset(ds: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(ds, tmp_path / "ds")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("x")
    befores = snapshot(copy), snapshot(busy)
    base = ["--model", "lenet5", "--epochs", "1", "--workers", "0", "--no-progress"]
    r = drive([["train", "--data", str(copy), "--out", str(copy), *base],
               ["train", "--data", str(copy), "--out", str(copy / "run"), *base],
               ["train", "--data", str(copy), "--out", str(busy), *base],
               ["train", "--data", str(copy), "--out", "", *base]])
    assert f"--out {copy}: a prepared dataset is there" in one_line(r[0]["err"], r[0]["rc"])
    assert f"--out {copy / 'run'}: is the dataset {copy} or inside or around it" in one_line(r[1]["err"], r[1]["rc"])
    assert f"--out {busy}: exists and is neither a run folder nor empty" in one_line(r[2]["err"], r[2]["rc"])
    assert "--out '': an empty value" in one_line(r[3]["err"], r[3]["rc"])
    assert (snapshot(copy), snapshot(busy)) == befores


@pytest.fixture(scope="module")
def other_classes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two prepared datasets with the same number of classes but other names, and a finished run
    (checkpoints kept) trained on the first."""
    root = tmp_path_factory.mktemp("classes")
    a = image_tree(root / "tree-a", per_class=4, val_per_class=2, size=36)
    b = image_tree(root / "tree-b", per_class=4, val_per_class=2, size=36)
    for split in ("train", "val"):
        for c, new in (("c0", "dog"), ("c1", "cat")):
            (b / split / c).rename(b / split / new)
    da, db = prepare(a, root / "a", progress=False, workers=0), prepare(b, root / "b", progress=False, workers=0)
    out = root / "run-a"
    rc, _, err = cli(train_args(Path(da), out, epochs=1))
    assert rc == 0, err[-3000:]
    return Path(da), Path(db), out


def test_a_model_and_a_dataset_must_agree_on_their_classes(other_classes: tuple[Path, Path, Path], tmp_path: Path) -> None:
    da, db, run_a = other_classes
    run_b = tmp_path / "run-b"
    rc, _, err = cli(train_args(db, run_b, epochs=1))
    assert rc == 0, err[-3000:]
    resumed = copy_run(run_a, tmp_path / "resumed")
    before = snapshot(resumed)
    r = drive([["evaluate", str(run_a), "--data", str(db), "--workers", "0", "--quiet"],
               ["evaluate", str(run_a), str(run_b), "--data", str(da), "--workers", "0", "--quiet"],
               ["train", "--out", str(resumed), "--resume", "--data", str(db), "--epochs", "2", "--workers", "0",
                "--no-progress"]])
    line = one_line(r[0]["err"], r[0]["rc"])
    assert f"{run_a} and {db} do not agree on their classes: class 0 is 'c0' in {run_a} but 'cat' in {db}" in line, line
    assert "a model and a dataset must agree on their classes" in line
    line = one_line(r[1]["err"], r[1]["rc"])
    assert f"{run_b} and {da} do not agree on their classes: class 0 is 'cat' in {run_b} but 'c0' in {da}" in line, line
    line = one_line(r[2]["err"], r[2]["rc"])
    assert "do not agree on their classes: class 0 is 'c0' in" in line and f"'cat' in {db}" in line, line
    assert snapshot(resumed) == before  # config.yaml not rewritten, nothing trained


@pytest.fixture
def small_disk(tmpfs) -> Path:
    return tmpfs("1m")


@pytest.mark.parametrize("fmt", ["onnx", "pt2", "safetensors"])
def test_an_export_on_a_real_full_disk_keeps_the_earlier_export(run: Path, small_disk: Path, fmt: str) -> None:
    out = small_disk / f"model.{fmt}"
    rc, _, err = cli(["export", str(run), "--format", fmt, "--out", str(out)])
    assert rc == 0, err[-3000:]
    good = out.read_bytes()
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * max(0, free - len(good) // 2))  # less room than one more export
    rc, _, err = cli(["export", str(run), "--format", fmt, "--out", str(out)])
    line = one_line(err, rc)
    assert "No space left on device" in line or "export failed" in line, line
    assert out.read_bytes() == good
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", out.name]


class _Site:
    """An HTTP server answering each path with the bytes given for it (200), or 404."""

    def __init__(self, files: dict[str, bytes]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_hub_downloads_are_cached_by_url_and_a_bad_download_is_never_kept(tmp_path: Path, monkeypatch) -> None:
    from alexnet import models
    from alexnet.engine.checkpoint import save_weights
    from alexnet.engine.torch_hub import build
    from alexnet.errors import UserError

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    nets, blobs = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = models.create("lenet5", 2).eval()
        meta = {"model": "lenet5", "model_options": {}, "num_classes": 2, "classes": ["a", "b"], "input_size": 32,
                "input_norm": "mean_image_std", "image_size": [32, 32]}
        save_weights(net, tmp_path / f"w{seed}.safetensors", meta)
        nets.append(net)
        blobs.append((tmp_path / f"w{seed}.safetensors").read_bytes())
    damaged = (10).to_bytes(8, "little") + b"{not json}" + b"\0" * 32  # looks like safetensors, does not load
    site = _Site({"/a/model.safetensors": blobs[0], "/b/model.safetensors": blobs[1],
                  "/html/model.safetensors": b"<!DOCTYPE html><html>Not found</html>", "/cut/model.safetensors": damaged})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    try:
        for _ in range(2):  # downloaded, then from the cache: each URL its own weights
            for name, net in zip("ab", nets):
                with torch.no_grad():
                    torch.testing.assert_close(build("lenet5", weights=f"{site.url}/{name}/model.safetensors",
                                                     progress=False)(x), net(x))
        with pytest.raises(UserError, match=r"html/model.safetensors: the download is not a weights file \(it begins "
                                            r"'<!DOCTYPE html><'\); nothing was kept"):
            build("lenet5", weights=f"{site.url}/html/model.safetensors", progress=False)
        with pytest.raises(UserError, match="removed from the cache"):
            build("lenet5", weights=f"{site.url}/cut/model.safetensors", progress=False)
        with torch.no_grad():  # neither failure touched what other URLs had cached
            torch.testing.assert_close(build("lenet5", weights=f"{site.url}/a/model.safetensors", progress=False)(x),
                                       nets[0](x))
    finally:
        site.close()
    kept = sorted(p.read_bytes() for p in (tmp_path / "hub").rglob("*") if p.is_file())
    assert kept == sorted(blobs)
