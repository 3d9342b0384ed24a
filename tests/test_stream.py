"""Shards streamed from object storage (alexnet.data.shards, alexnet.data.stream, `alexnet shard`),
against a local S3-compatible server (moto's server mode) on 127.0.0.1 that the tests start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("litdata")
pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from alexnet.cli import main  # noqa: E402
from alexnet.data.format import PreparedDataset  # noqa: E402
from alexnet.data.shards import export_shards  # noqa: E402
from alexnet.data.sources import synthetic  # noqa: E402
from alexnet.data.stream import LOCK, MANIFEST, PARTIAL, StreamedSplit, StreamLoader  # noqa: E402
from alexnet.errors import UserError  # noqa: E402

BUCKET = "alexnet-test"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A moto S3 server process on 127.0.0.1, its endpoint and credentials in the environment."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the moto server did not start")
            time.sleep(0.05)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield env["AWS_ENDPOINT_URL"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 10 classes × 10 images of 36×36, raw: 3,888 bytes a record.
    return synthetic.build(tmp_path_factory.mktemp("stream") / "ds", size=36, train_per_class=10, val_per_class=2)


@pytest.fixture(scope="module")
def exported(s3_server, data) -> str:
    # Chunks of ~4 records: the 100 training records in 25 chunks, so that the shuffle has chunks to permute.
    return export_shards(data, f"s3://{BUCKET}/shared", chunk_bytes=4 * 3900, log=lambda s: None)


def s3():
    import boto3

    return boto3.client("s3")


def keys(prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", []))


def epoch(loader: StreamLoader, e: int, start: int = 0) -> list:
    loader.set_epoch(e)
    return list(loader.iterate(start_batch=start))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- the same samples -------------------------------------------------------------------------------


def test_the_export_holds_the_local_samples_labels_and_classes(exported, data) -> None:
    for split in ("train", "val"):
        local, streamed = PreparedDataset(data, split), StreamedSplit(exported, split)
        assert streamed.classes == local.classes and streamed.class_names == local.class_names
        assert (streamed.encoding, streamed.image_size, len(streamed)) == (local.encoding, local.image_size, len(local))
        assert np.array_equal(streamed.labels, local.labels)
        for i in range(len(local)):  # random access, in stored order
            img, label = streamed[i]
            ref, ref_label = local[i]
            assert label == ref_label and torch.equal(img, ref), (split, i)
    st, ref = StreamedSplit(exported).stats(), PreparedDataset(data).stats()
    assert all(torch.equal(st[k], ref[k]) for k in ref)


def test_an_epoch_streams_each_training_sample_once_with_its_label_and_position(exported, data) -> None:
    local = PreparedDataset(data, "train")
    loader = StreamLoader(StreamedSplit(exported), 8, shuffle=True, seed=0)
    assert len(loader) == len(local) // 8  # full batches only, as the local loader
    seen = []
    for b in epoch(loader, 0):
        assert b.images.shape == (8, 3, 36, 36) and b.images.dtype == torch.uint8
        for img, label, pos in zip(b.images, b.labels.tolist(), b.indices.tolist()):
            ref, ref_label = local[pos]
            assert label == ref_label and torch.equal(img, ref)
            seen.append(pos)
    assert len(seen) == len(set(seen)) == 12 * 8  # no repeat; litdata's drop_last leaves out 100 - 96
    assert seen != sorted(seen)  # shuffled


def test_evaluation_reads_every_image_once_in_order_across_processes(exported) -> None:
    ds = StreamedSplit(exported, "val")
    got = []
    for rank in range(3):
        got += [i for b in StreamLoader(ds, 6, shuffle=False, rank=rank, world_size=3) for i in b.indices.tolist()]
    assert got == list(range(len(ds)))


# -- order and resume -------------------------------------------------------------------------------


def ids(batches) -> list[list[int]]:
    return [b.indices.tolist() for b in batches]


def test_the_order_is_a_function_of_seed_and_epoch(exported) -> None:
    def order(seed: int, e: int) -> list[list[int]]:
        return ids(epoch(StreamLoader(StreamedSplit(exported), 8, shuffle=True, seed=seed), e))

    a = order(1, 0)
    assert order(1, 0) == a  # a fresh loader, the same (seed, epoch): the same batches
    assert order(1, 1) != a
    assert order(2, 0) != a
    loader = StreamLoader(StreamedSplit(exported), 8, shuffle=True, seed=1)
    assert ids(epoch(loader, 1)) == order(1, 1) and ids(epoch(loader, 0)) == a  # one loader, epochs in any order


@pytest.mark.parametrize("start", [1, 5, 11])
def test_a_resume_mid_epoch_continues_exactly(exported, start) -> None:
    fresh = StreamLoader(StreamedSplit(exported), 8, shuffle=True, seed=3)
    full, after = ids(epoch(fresh, 2)), ids(epoch(fresh, 3))
    loader = StreamLoader(StreamedSplit(exported), 8, shuffle=True, seed=3)
    assert ids(epoch(loader, 2, start=start)) == full[start:]
    assert ids(epoch(loader, 3)) == after  # the resumed epoch's state does not carry into the next


def test_options_that_cannot_apply_to_a_stream_are_refused(exported) -> None:
    ds = StreamedSplit(exported)
    with pytest.raises(UserError, match="train_subset=10"):
        StreamLoader(ds, 8, shuffle=True, subset=10)
    with pytest.raises(UserError, match="decode=cuda"):
        StreamLoader(ds, 8, shuffle=True, decode="cuda")
    assert StreamLoader(ds, 8, shuffle=True, decode="auto").notes == []  # auto: the CPU, as without a GPU
    assert "no loader workers are started" in StreamLoader(ds, 8, shuffle=True, workers=4).notes[0]


# -- the export's rules ------------------------------------------------------------------------------


def test_an_export_never_overwrites_what_it_did_not_write_nor_a_finished_export(s3_server, data, exported) -> None:
    with pytest.raises(UserError, match="already holds a shard export"):
        export_shards(data, exported, log=lambda s: None)
    s3().put_object(Bucket=BUCKET, Key="foreign/notes.txt", Body=b"someone's")
    with pytest.raises(UserError, match="did not write"):
        export_shards(data, f"s3://{BUCKET}/foreign", log=lambda s: None)
    assert keys("foreign") == ["foreign/notes.txt"]
    assert s3().get_object(Bucket=BUCKET, Key="foreign/notes.txt")["Body"].read() == b"someone's"


def test_a_second_exporter_is_refused_while_the_lock_is_held(s3_server, data) -> None:
    holder = json.dumps({"host": "elsewhere", "pid": 4242, "since": "now"}).encode()
    s3().put_object(Bucket=BUCKET, Key=f"locked/{LOCK}", Body=holder)
    with pytest.raises(UserError, match=r"another export is writing it \(host elsewhere, pid 4242"):
        export_shards(data, f"s3://{BUCKET}/locked", log=lambda s: None)
    assert keys("locked") == [f"locked/{LOCK}"]  # nothing written, the holder's lock kept


def test_two_exporters_racing_for_one_prefix_one_wins(s3_server, data, tmp_path) -> None:
    code = ("import sys; from alexnet.cli import main; "
            f"sys.exit(main(['shard', {str(data)!r}, '--out', 's3://{BUCKET}/race', '--quiet']))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    # Both may finish one after the other (then the second finds a finished export); never two at once.
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert "another export is writing it" in err or "already holds a shard export" in err
    assert len(StreamedSplit(f"s3://{BUCKET}/race")) == 100
    assert f"race/{LOCK}" not in keys("race") and f"race/{PARTIAL}" not in keys("race")


def test_an_interrupted_export_is_never_read_as_complete_and_a_rerun_finishes_it(s3_server, data, monkeypatch) -> None:
    from alexnet.data import object_store

    url = f"s3://{BUCKET}/interrupted"
    real, calls = object_store.S3Store.upload, []

    def failing(self, local, name):
        calls.append(name)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as Ctrl-C (or SIGTERM, which the CLI turns into it) mid-upload
        return real(self, local, name)

    monkeypatch.setattr(object_store.S3Store, "upload", failing)
    with pytest.raises(KeyboardInterrupt):
        export_shards(data, url, chunk_bytes=4 * 3900, log=lambda s: None)
    monkeypatch.setattr(object_store.S3Store, "upload", real)
    left = keys("interrupted")
    assert f"interrupted/{PARTIAL}" in left and f"interrupted/{MANIFEST}" not in left
    assert f"interrupted/{LOCK}" not in left  # released on the way out
    with pytest.raises(UserError, match="incomplete shard export"):
        StreamedSplit(url)
    export_shards(data, url, chunk_bytes=4 * 3900, log=lambda s: None)  # its own partial export: redone
    assert len(StreamedSplit(url)) == 100 and f"interrupted/{PARTIAL}" not in keys("interrupted")


def test_a_local_folder_export_is_atomic_and_streams_the_same(data, tmp_path) -> None:
    out = tmp_path / "shards"
    export_shards(data, str(out), chunk_bytes=4 * 3900, log=lambda s: None)
    assert (out / MANIFEST).is_file() and not Path(str(out) + ".partial").exists()
    a = ids(epoch(StreamLoader(StreamedSplit(out), 8, shuffle=True, seed=0), 0))
    assert sorted(sum(a, [])) == sorted(set(sum(a, [])))
    with pytest.raises(UserError, match="already holds a shard export"):
        export_shards(data, str(out), log=lambda s: None)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_shards(data, str(tmp_path / "busy"), log=lambda s: None)


# -- the command ------------------------------------------------------------------------------------


@pytest.mark.parametrize("out, env, message", [
    ("gs://b/p", {}, "unsupported URL scheme 'gs'"),
    ("s3:///p", {}, "no bucket"),
    (f"s3://{BUCKET}", {}, "no prefix"),
    (f"s3://no-such-bucket-here/p", {}, "no such bucket"),
    (f"s3://{BUCKET}/p", {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}, "cannot reach the object store"),
    (f"s3://{BUCKET}/p", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
                          "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"},
     "no S3 credentials"),
])
def test_shard_refuses_bad_places_in_one_line(s3_server, data, capsys, monkeypatch, out, env, message) -> None:
    for k, v in env.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    assert main(["shard", str(data), "--out", out]) == 2
    assert message in one_line_error(capsys)


def test_shard_refuses_a_missing_dataset(s3_server, tmp_path, capsys) -> None:
    assert main(["shard", str(tmp_path / "nothing"), "--out", f"s3://{BUCKET}/m"]) == 2
    assert "no such dataset folder" in one_line_error(capsys)
    assert keys("m") == []


def test_training_from_s3_a_couple_of_steps(s3_server, data, tmp_path, capsys) -> None:
    url = f"s3://{BUCKET}/cli"
    assert main(["shard", str(data), "--out", url, "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == url
    out = tmp_path / "run"
    assert main(["train", "--data", url, "--model", "alexnet-cifar", "--out", str(out), "--batch-size", "16",
                 "--epochs", "1", "--set", "max_steps_per_epoch=2", "--no-progress", "--workers", "2"]) == 0
    assert "warning: workers=2: a streamed dataset is decoded in the training process" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_images"] == 32 and rows[-1]["val_images"] == 20
    assert main(["train", "--data", f"s3://{BUCKET}/not-there", "--model", "alexnet-cifar", "--out",
                 str(tmp_path / "run2"), "--epochs", "1", "--no-progress"]) == 2
    assert "not a shard export" in one_line_error(capsys)
    assert main(["evaluate", str(out), "--data", url]) == 2  # evaluation outside training reads a local folder
    assert "streamed by 'alexnet train' only" in one_line_error(capsys)


_RANK_CODE = """
import json, os, sys
import torch.distributed as dist
from alexnet.data.stream import StreamedSplit, StreamLoader
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
def ids(start):
    loader = StreamLoader(StreamedSplit(sys.argv[1]), 8, shuffle=True, seed=5, rank=rank, world_size=world)
    loader.set_epoch(1)
    return len(loader), [b.indices.tolist() for b in loader.iterate(start_batch=start)]
n, full = ids(0)
_, resumed = ids(2)
json.dump({"n": n, "full": full, "resumed": resumed}, open(sys.argv[2], "w"))
dist.destroy_process_group()
"""


def test_two_processes_stream_disjoint_shares_and_resume_exactly(exported, tmp_path) -> None:
    """Under torch.distributed (gloo, 2 processes) each process streams its own share of the chunks:
    the global batch of a step holds no sample twice, the epoch no sample twice, both processes
    take the same number of steps, and each resumes mid-epoch exactly."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", _RANK_CODE, exported, str(tmp_path / f"{r}.json")],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2))
    assert r0["n"] == r1["n"] == len(r0["full"]) == len(r1["full"]) > 0
    seen = [i for a, b in zip(r0["full"], r1["full"]) for i in a + b]
    assert len(seen) == len(set(seen)) == r0["n"] * 8
    assert r0["resumed"] == r0["full"][2:] and r1["resumed"] == r1["full"][2:]


@pytest.mark.slow
def test_training_from_s3_killed_mid_epoch_then_resumed_is_bitwise_exact(s3_server, exported, tmp_path) -> None:
    """The whole path: `alexnet train --data s3://...` killed with SIGKILL inside a step of its first
    epoch, after a mid-epoch checkpoint, then `--resume`d, ends with the uninterrupted run's weights."""
    import signal

    from test_resume import LAUNCHER, wait_for

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}

    def train(out: Path, *extra: str) -> list[str]:
        return ["train", "--data", exported, "--model", "alexnet-cifar", "--out", str(out), "--epochs", "2",
                "--batch-size", "16", "--no-progress", "--save-every", "2", "--seed", "4", *extra]

    ref = tmp_path / "ref"
    r = subprocess.run([sys.executable, "-m", "alexnet", *train(ref)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    run, marker = tmp_path / "run", tmp_path / "marker"
    p = subprocess.Popen([sys.executable, "-c", LAUNCHER, *train(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**env, "PAUSE_AT": "step:4", "PAUSE_MARKER": str(marker)})
    wait_for(marker, p)  # inside step 4 of 6 in epoch 1; the checkpoint of step 2 is on disk
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    from alexnet.engine.checkpoint import latest_checkpoint

    assert latest_checkpoint(run) is not None  # step 2's: the resume starts inside the epoch
    r = subprocess.run([sys.executable, "-m", "alexnet", "train", "--out", str(run), "--resume", "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
