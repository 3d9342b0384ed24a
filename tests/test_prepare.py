"""``prepare`` on ILSVRC-2012-layout archives: classes, labels, geometry, bad files, refusals,
path traversal, atomic and resumable writing, the CLI, and the throughput probe."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import alexnet.data.prepare as P
import alexnet.data.workers as W
from alexnet.cli import main
from alexnet.data import DatasetError, PreparedDataset, is_prepared
from alexnet.data.decode import fit
from alexnet.data.writer import write_arrays
from alexnet.errors import UserError
from alexnet.perf.fixtures import photo_like_jpegs
from alexnet.perf.prepare import prepare_throughput
from fakes_data import COLORS, LEAVES, SORTED, WORDS, build_imagenet, nearest_class, tar_bytes, write_cifar


def partial(out: Path) -> Path:
    return Path(str(out) + ".partial")


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    fake = build_imagenet(root / "src", traversal=True)
    out = P.prepare(root / "src", root / "out", size=16, workers=1, progress=False)
    return fake, out


def test_classes_are_sorted_wnids_named_from_meta_mat(imagenet):
    fake, out = imagenet
    ds = PreparedDataset(out, "train")
    assert ds.classes == SORTED
    assert ds.classes != [w for _, w, _ in LEAVES]  # the devkit's ID order is another order
    assert ds.class_names == [WORDS[w] for w in SORTED]
    assert "n00000005" not in ds.classes and "n00000006" not in ds.classes  # inner nodes are not classes
    assert ds.num_classes == 4


def test_counts_geometry_and_train_labels(imagenet):
    fake, out = imagenet
    ds = PreparedDataset(out, "train")
    counts = np.bincount(ds.labels, minlength=4)
    assert counts.tolist() == [fake.train_counts[w] for w in SORTED]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["image_size"] == [16, 16]
    assert meta["splits"]["train"]["encoding"] == "raw"  # 16×16 is small: raw
    batch = ds.read_batch(range(len(ds)))
    assert batch.shape == (len(ds), 3, 16, 16) and batch.dtype == torch.uint8
    for i in range(len(ds)):
        img, label = ds[i]
        c = img[:, 4:12, 4:12].float().reshape(3, -1).mean(1)
        if float(c.max() - c.min()) < 10:  # the grayscale-converted file: no colour to check
            continue
        assert nearest_class(img, ds.classes) == ds.classes[label]
        # The grey margins outside the central square were cropped away (§2's centre crop).
        inner = img[:, 2:14, 2:14].float()
        assert (inner - torch.tensor(COLORS[ds.classes[label]]).view(3, 1, 1)).abs().max() < 30


def test_val_labels_go_through_meta_mat_ids(imagenet):
    fake, out = imagenet
    val = PreparedDataset(out, "val")
    assert len(val) == len(fake.val_wnids)  # the truncated one is skipped
    # record k is the k-th kept file by number; its true class is encoded in its colour
    assert [val.classes[int(l)] for l in val.labels] == fake.val_wnids
    assert [nearest_class(val[i][0], val.classes) for i in range(len(val))] == fake.val_wnids


def test_report_lists_every_converted_and_skipped_file(imagenet):
    fake, out = imagenet
    report = json.loads((out / "prepare_report.json").read_text())
    got = {}
    for kind in ("converted", "skipped"):
        for e in report[kind]:
            member = e["file"].split(".tar/", )[-1] if ".tar/" in e["file"] else e["file"]
            got[member] = (kind, e["codes"])
            assert e["reason"] and e["split"] in ("train", "val")
    for name, (kind, code) in fake.bad.items():
        key = next((k for k in got if k.endswith(name)), None)
        assert key is not None, name
        assert got[key][0] == kind and code in got[key][1], (name, got[key])
    assert len(got) == len(fake.bad)
    assert report["summary"]["converted"] == sum(k == "converted" for k, _ in fake.bad.values())
    assert report["summary"]["skipped"] == sum(k == "skipped" for k, _ in fake.bad.values())


def test_unsafe_members_never_leave_dir(imagenet):
    fake, out = imagenet
    root = out.parent
    assert not list(root.parent.rglob("escaped.JPEG")) and not Path("/tmp/absolute.JPEG").exists()
    assert not list(root.parent.rglob("outside.tar"))
    expected = ["meta.json", "prepare_report.json", "stats.safetensors", "train", "val"]
    assert sorted(p.name for p in out.iterdir()) == expected


def test_training_statistics(imagenet):
    fake, out = imagenet
    ds = PreparedDataset(out, "train")
    st = ds.stats()
    batch = ds.read_batch(range(len(ds))).double()
    assert torch.allclose(st["mean"].double(), batch.mean(0), atol=1e-3)
    px = batch.permute(0, 2, 3, 1).reshape(-1, 3) / 255  # N×3×H×W -> NHW×3
    cov = torch.cov(px.T)
    # 256 sampled pixels of 256 per image: the sample is the whole image here
    assert torch.allclose(st["eigval"].double(), torch.linalg.eigvalsh(cov).flip(0), atol=1e-3)
    v = st["eigvec"].double()
    assert torch.allclose(v.T @ v, torch.eye(3, dtype=torch.float64), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Refusals: before any work, nothing left behind


@pytest.mark.parametrize("case", ["gt_long", "gt_short", "no_devkit", "corrupt_val", "corrupt_train", "no_meta"])
def test_refusals_leave_nothing(tmp_path, case):
    src = tmp_path / "src"
    if case == "gt_long":
        build_imagenet(src, bad=False, gt_extra=1)
    elif case == "gt_short":
        build_imagenet(src, bad=False, val_ids=[1, 2, 3])
        # the val archive keeps 3 images but the ground truth loses a line
        with tarfile.open(src / "ILSVRC2012_devkit_t12.tar.gz") as tf:
            meta = tf.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()
        import io
        b = io.BytesIO()
        with tarfile.open(fileobj=b, mode="w:gz") as tf:
            from fakes_data import add
            add(tf, "ILSVRC2012_devkit_t12/data/meta.mat", meta)
            add(tf, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", b"1\n2\n")
        (src / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(b.getvalue())
    elif case == "no_devkit":
        build_imagenet(src, bad=False, devkit=False)
    elif case == "corrupt_val":
        build_imagenet(src, bad=False, corrupt_val=True)
    elif case == "corrupt_train":
        build_imagenet(src, bad=False)
        data = (src / "ILSVRC2012_img_train.tar").read_bytes()
        (src / "ILSVRC2012_img_train.tar").write_bytes(data[:2000] + b"\x17" * 1500)
    elif case == "no_meta":
        build_imagenet(src, bad=False)
        b = tar_bytes([("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", b"1\n")])
        import gzip
        (src / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(gzip.compress(b))
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        P.prepare(src, out, size=16, workers=1, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    expect = {"gt_long": "ground truth", "gt_short": "ground truth", "no_devkit": "ILSVRC2012_devkit_t12.tar.gz",
              "corrupt_val": "ILSVRC2012_img_val.tar", "corrupt_train": "ILSVRC2012_img_train.tar",
              "no_meta": "meta.mat"}[case]
    assert expect in msg
    assert not out.exists() and not partial(out).exists()


def test_cli_refusal_exit_code_2(tmp_path, capsys):
    build_imagenet(tmp_path / "src", bad=False, gt_extra=2)
    rc = main(["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--size", "16", "--workers", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "ground truth" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_refuses_existing_output(tmp_path, imagenet):
    fake, out = imagenet
    with pytest.raises(UserError, match="already"):
        P.prepare(fake.folder, out, size=16, workers=1, progress=False)


# ---------------------------------------------------------------------------------------------
# Atomic and resumable


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("meta.json",)}


@pytest.mark.parametrize("fail_at", [3, 7])  # mid-train; mid-val (train already closed)
def test_interrupted_prepare_never_opens_and_resumes(tmp_path, monkeypatch, fail_at):
    src = tmp_path / "src"
    build_imagenet(src, per_class=4)
    monkeypatch.setattr(P, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(P, "INLINE_CHUNK", 4)
    fresh = P.prepare(src, tmp_path / "fresh", size=12, workers=1, progress=False)

    real = W._process_chunk
    calls = {"n": 0}

    def flaky(job):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("power cut")
        return real(job)

    monkeypatch.setattr(W, "_process_chunk", flaky)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="power cut"):
        P.prepare(src, out, size=12, workers=1, progress=False)
    assert not is_prepared(out)
    with pytest.raises(DatasetError):
        PreparedDataset(out, "train")
    assert partial(out).exists()

    calls["n"] = -10**9  # no more failures; count the chunks the rerun decodes
    total = len(range(0, 25, 4)) + len(range(0, 9, 4))
    P.prepare(src, out, size=12, workers=1, progress=False)
    assert 0 < calls["n"] + 10**9 < total  # resumed, not redone
    assert not partial(out).exists()
    a, b = _files(fresh), _files(out)
    assert a.keys() == b.keys()
    for k in a:
        if k == "prepare_report.json":
            ra, rb = json.loads(a[k]), json.loads(b[k])
            ra["summary"].pop("seconds"), rb["summary"].pop("seconds")
            assert ra == rb
        elif k == "stats.safetensors":
            sa, sb = PreparedDataset(fresh).stats(), PreparedDataset(out).stats()
            for key in sa:
                assert torch.allclose(sa[key], sb[key], atol=1e-6), key
        else:
            assert a[k] == b[k], k


def test_ctrl_c_checkpoints_then_resumes(tmp_path, monkeypatch):
    import os
    import signal

    src = tmp_path / "src"
    build_imagenet(src, per_class=4)
    monkeypatch.setattr(P, "INLINE_CHUNK", 4)  # CHECKPOINT_SECONDS stays 60: only Ctrl-C checkpoints
    real = W._process_chunk
    calls = {"n": 0}

    def interrupted(job):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while chunk 3 is decoded
        return real(job)

    monkeypatch.setattr(W, "_process_chunk", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        P.prepare(src, out, size=12, workers=1, progress=False)
    assert calls["n"] == 3  # stopped right after the chunk in hand
    assert not is_prepared(out) and (partial(out) / "progress.json").exists()
    calls["n"] = -10**9
    P.prepare(src, out, size=12, workers=1, progress=False)
    assert calls["n"] + 10**9 == len(range(12, 25, 4)) + len(range(0, 9, 4))  # the rest only
    fresh = P.prepare(src, tmp_path / "fresh", size=12, workers=1, progress=False)
    for split in ("train", "val"):
        assert (fresh / split / "data.bin").read_bytes() == (out / split / "data.bin").read_bytes()
        assert np.array_equal(np.load(fresh / split / "index.npy"), np.load(out / split / "index.npy"))


def test_changed_options_start_clean(tmp_path, monkeypatch):
    src = tmp_path / "src"
    build_imagenet(src, bad=False)
    monkeypatch.setattr(P, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(P, "INLINE_CHUNK", 2)
    real = W._process_chunk
    calls = {"n": 0}

    def flaky(job):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(W, "_process_chunk", flaky)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        P.prepare(src, out, size=16, workers=1, progress=False)
    monkeypatch.setattr(W, "_process_chunk", real)
    P.prepare(src, out, size=12, workers=1, progress=False)  # another size: the partial work is discarded
    ds = PreparedDataset(out, "train")
    assert ds.image_size == (12, 12) and len(ds) == 8
    assert ds.read_batch(range(len(ds))).shape == (8, 3, 12, 12)


def test_statistics_do_not_depend_on_the_writer_or_the_chunking(tmp_path, monkeypatch):
    """One computation of the §2/§4.1 statistics: the same images in the same order give the same
    stats.safetensors whether ``prepare`` writes them (in chunks of any size) or ``write_arrays``
    does from memory, because each image's pixels are sampled by its position in the split."""
    fake = write_cifar(tmp_path / "dl", n_train=30, n_test=6)  # 150 training images, 32×32 (> 256 pixels)
    x, y = fake["train"]
    images = np.ascontiguousarray(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # CIFAR's planes -> N×H×W×3
    tx, ty = fake["test"]
    val = np.ascontiguousarray(tx.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    written = write_arrays(tmp_path / "arrays", {"train": (images, np.array(y)), "val": (val, np.array(ty))},
                           classes=fake["names"])
    prepared = P.prepare(fake["path"], tmp_path / "prepared", workers=1, progress=False)  # native size, raw
    monkeypatch.setattr(P, "INLINE_CHUNK", 7)
    chunked = P.prepare(fake["path"], tmp_path / "chunked", workers=1, progress=False)
    # The same images in the same order...
    assert (written / "train" / "data.bin").read_bytes() == (prepared / "train" / "data.bin").read_bytes()
    # ...give the same statistics, bit for bit.
    want = PreparedDataset(written).stats()
    for out in (prepared, chunked):
        got = PreparedDataset(out).stats()
        for key in ("mean", "eigval", "eigvec"):
            assert torch.equal(got[key], want[key]), (out.name, key)


# ---------------------------------------------------------------------------------------------
# Worker processes, JPEG storage, the CLI, throughput


def test_workers_jpeg_and_cli(tmp_path, capsys):
    src = tmp_path / "src"
    fake = build_imagenet(src)
    rc = main(["prepare", str(src), "--out", str(tmp_path / "out"), "--size", "72", "--workers", "2",
               "--quality", "85"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "converted" in err and "skipped" in err and "prepare_report.json" in err  # the summary
    ds = PreparedDataset(tmp_path / "out", "train")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["splits"]["train"]["encoding"] == "jpeg" and meta["source"]["quality"] == 85
    assert meta["source"]["kind"] == "imagenet" and "torch" in meta["versions"]
    assert np.bincount(ds.labels, minlength=4).tolist() == [fake.train_counts[w] for w in SORTED]
    img, _ = ds[0]
    assert img.shape == (3, 72, 72)
    rec = ds.record(0).tobytes()
    assert rec[:2] == b"\xff\xd8"  # stored as JPEG
    val = PreparedDataset(tmp_path / "out", "val")
    assert [nearest_class(val[i][0], val.classes) for i in range(len(val))] == fake.val_wnids


def test_fit_is_shorter_side_then_centre_crop():
    from PIL import Image

    a = np.zeros((30, 60, 3), np.uint8)
    a[:, :15] = 255  # left quarter white: entirely outside the central 30×30
    a[:, 45:] = 255
    out = np.asarray(fit(Image.fromarray(a), (10, 10)))
    assert out.shape == (10, 10, 3)
    assert out[:, 1:9].max() == 0
    tall = np.asarray(fit(Image.fromarray(np.zeros((100, 20, 3), np.uint8)), (8, 8)))
    assert tall.shape == (8, 8, 3)


def test_prepare_throughput_probe():
    r = prepare_throughput(n=6, workers=1, size=64, source_size=(120, 90))
    assert r["images"] == 6 and r["ok"] == 6 and r["workers"] == 1
    assert r["img_s"] > 0 and r["img_s_per_core"] == pytest.approx(r["img_s"])


def test_photo_like_jpegs_are_imagenet_sized():
    from PIL import Image
    import io

    data = photo_like_jpegs(2)
    im = Image.open(io.BytesIO(data[0]))
    assert im.size == (500, 375) and im.format == "JPEG"
    assert 30_000 < len(data[0]) < 400_000
