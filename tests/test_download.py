"""``download``: against a local HTTP server on 127.0.0.1 (Range support, as S3 and the Toronto
server have): fetch + verify + prepare, resume from a .part file, checksum mismatch refused."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import alexnet.data.download as D
from alexnet.cli import main
from alexnet.data import PreparedDataset
from alexnet.errors import UserError
from fakes_data import add, jpeg, write_cifar


class Server:
    """Serves the files of a folder, honouring ``Range: bytes=N-``; records each request."""

    def __init__(self, root: Path, ranges: bool = True) -> None:
        self.root, self.ranges, self.requests = root, ranges, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append((self.path, self.headers.get("Range")))
                p = outer.root / self.path.lstrip("/").split("/")[-1]
                if not p.is_file():
                    self.send_error(404)
                    return
                data = p.read_bytes()
                rng = self.headers.get("Range")
                if rng and outer.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    body = data[start:]
                else:
                    self.send_response(200)
                    body = data
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def cifar_served(tmp_path, monkeypatch):
    fake = write_cifar(tmp_path / "served", "cifar10", n_train=4, n_test=3)
    data = fake["path"].read_bytes()
    remote = D.DATASETS["cifar10"]
    # The fake archive stands in for the official one: its md5 is the one to check.
    monkeypatch.setitem(D.DATASETS, "cifar10", D.Remote(remote.filename, remote.base_url,
                                                         md5=hashlib.md5(data).hexdigest(), fmt="cifar"))
    return fake, data


def test_download_verifies_and_prepares(tmp_path, cifar_served):
    fake, data = cifar_served
    with Server(tmp_path / "served") as srv:
        out = D.download("cifar10", tmp_path / "out", base_url=srv.url, cache=tmp_path / "cache", progress=False)
    assert srv.requests == [("/files/cifar-10-python.tar.gz", None)]
    assert (tmp_path / "cache" / "cifar-10-python.tar.gz").read_bytes() == data
    ds = PreparedDataset(out, "train")
    assert len(ds) == 20 and ds.classes == fake["names"] and ds.labels.tolist() == fake["train"][1]
    assert len(PreparedDataset(out, "val")) == 3


def test_resume_from_part_file(tmp_path, cifar_served, monkeypatch):
    fake, data = cifar_served
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cifar-10-python.tar.gz.part").write_bytes(data[:1000])  # an interrupted earlier attempt
    with Server(tmp_path / "served") as srv:
        monkeypatch.setenv(D.ENV_BASE_URL, srv.url)  # the environment variable alone redirects it
        rc = main(["download", "cifar10", "--out", str(tmp_path / "out"), "--cache", str(cache), "--quiet"])
    assert rc == 0
    assert srv.requests == [("/files/cifar-10-python.tar.gz", "bytes=1000-")]
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == data
    assert not (cache / "cifar-10-python.tar.gz.part").exists()
    assert len(PreparedDataset(tmp_path / "out", "val")) == 3


def test_server_without_ranges_restarts_cleanly(tmp_path, cifar_served):
    fake, data = cifar_served
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cifar-10-python.tar.gz.part").write_bytes(b"garbage that is not a prefix")
    with Server(tmp_path / "served", ranges=False) as srv:
        D.download("cifar10", tmp_path / "out", base_url=srv.url, cache=cache, progress=False)
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == data


def test_checksum_mismatch_refused_and_removed(tmp_path, cifar_served, capsys):
    fake, data = cifar_served
    (tmp_path / "served" / "cifar-10-python.tar.gz").write_bytes(data[:-10] + b"tampered!!")
    cache = tmp_path / "cache"
    with Server(tmp_path / "served") as srv:
        with pytest.raises(UserError, match="checksum mismatch"):
            D.download("cifar10", tmp_path / "out", base_url=srv.url, cache=cache, progress=False)
        rc = main(["download", "cifar10", "--out", str(tmp_path / "out"), "--cache", str(cache),
                   "--base-url", srv.url])
    assert rc == 2 and "checksum mismatch" in capsys.readouterr().err
    assert not list(cache.iterdir())  # neither the archive nor a .part is kept
    assert not (tmp_path / "out").exists()


def test_official_checksum_is_enforced(tmp_path):
    # The built-in (real) md5 does not match a fake archive: refused.
    write_cifar(tmp_path / "served", "cifar100", n_train=2, n_test=2)
    with Server(tmp_path / "served") as srv:
        with pytest.raises(UserError, match="md5 checksum mismatch"):
            D.download("cifar100", tmp_path / "out", base_url=srv.url, cache=tmp_path / "cache", progress=False)


def test_imagenette_layout_from_tgz_with_names(tmp_path, monkeypatch):
    wnids = sorted(D.IMAGENETTE_NAMES)[:3]
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w:gz") as tf:
        for split, n in (("train", 2), ("val", 1)):
            for k, w in enumerate(wnids):
                for j in range(n):
                    add(tf, f"imagenette2-320/{split}/{w}/{w}_{j}.JPEG", jpeg(48, 32, (60 * k, 100, 200 - 60 * k)))
        add(tf, "imagenette2-320/noisy_imagenette.csv", b"path,noisy_labels_0\n")
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "imagenette2-320.tgz").write_bytes(b.getvalue())
    md5 = hashlib.md5(b.getvalue()).hexdigest()
    with Server(tmp_path / "served") as srv:
        out = D.download("imagenette", tmp_path / "out", base_url=srv.url, cache=tmp_path / "cache",
                         checksum=md5, size=24, workers=1, progress=False)
    ds = PreparedDataset(out, "train")
    assert ds.classes == wnids and ds.class_names == [D.IMAGENETTE_NAMES[w] for w in wnids]
    assert np.bincount(ds.labels).tolist() == [2, 2, 2] and ds.image_size == (24, 24)
    assert len(PreparedDataset(out, "val")) == 3


def test_unknown_name_and_busy_out(tmp_path):
    with pytest.raises(UserError, match="unknown"):
        D.download("mnist-fashion", tmp_path / "o")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(UserError, match="not an empty"):
        D.download("cifar10", tmp_path / "busy", base_url="http://127.0.0.1:9/none")


def test_official_urls():
    assert D.url_of("cifar10") == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert D.url_of("imagenette") == "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz"
    assert D.url_of("imagewoof", "http://mirror/x/") == "http://mirror/x/imagewoof2-320.tgz"


@pytest.fixture
def fashion_served(tmp_path, monkeypatch):
    """Four fake IDX archives served under Fashion-MNIST's official names, their md5s the ones checked."""
    from fakes_data import write_idx

    fake = write_idx(tmp_path / "served", n_train=12, n_test=5)
    remote = D.DATASETS["fashion-mnist"]
    files = tuple((f, hashlib.md5((tmp_path / "served" / f).read_bytes()).hexdigest()) for f, _ in remote.files)
    monkeypatch.setitem(D.DATASETS, "fashion-mnist", D.Remote(remote.filename, remote.base_url, fmt="idx", files=files))
    return fake


def test_fashion_mnist_four_files_verified_and_prepared(tmp_path, fashion_served):
    with Server(tmp_path / "served") as srv:
        out = D.download("fashion-mnist", tmp_path / "out", base_url=srv.url, cache=tmp_path / "cache", progress=False)
    assert sorted(p for p, _ in srv.requests) == sorted(f"/files/{f}" for f, _ in D.DATASETS["fashion-mnist"].files)
    for f, _ in D.DATASETS["fashion-mnist"].files:
        assert (tmp_path / "cache" / "fashion-mnist" / f).read_bytes() == (tmp_path / "served" / f).read_bytes()
    ds = PreparedDataset(out, "train")
    assert len(ds) == 12 and ds.image_size == (32, 32) and ds.labels.tolist() == fashion_served["train"][1].tolist()
    assert len(PreparedDataset(out, "val")) == 5


def test_fashion_mnist_resumes_each_file_and_refuses_a_bad_one(tmp_path, fashion_served, capsys):
    cache = tmp_path / "cache" / "fashion-mnist"
    cache.mkdir(parents=True)
    first = D.DATASETS["fashion-mnist"].files[0][0]
    data = (tmp_path / "served" / first).read_bytes()
    (cache / (first + ".part")).write_bytes(data[:100])  # an interrupted earlier attempt
    with Server(tmp_path / "served") as srv:
        rc = main(["download", "fashion-mnist", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
                   "--base-url", srv.url, "--quiet"])
    assert rc == 0
    assert (f"/files/{first}", "bytes=100-") in srv.requests
    assert (cache / first).read_bytes() == data and not (cache / (first + ".part")).exists()
    # A damaged file on the server: refused, removed, nothing prepared.
    last = D.DATASETS["fashion-mnist"].files[-1][0]
    (tmp_path / "served" / last).write_bytes(b"tampered")
    (cache / last).unlink()
    with Server(tmp_path / "served") as srv:
        rc = main(["download", "fashion-mnist", "--out", str(tmp_path / "out2"), "--cache", str(tmp_path / "cache"),
                   "--base-url", srv.url])
    assert rc == 2 and "checksum mismatch" in capsys.readouterr().err
    assert not (cache / last).exists() and not (tmp_path / "out2").exists()


def test_fashion_mnist_official_urls_and_checksums():
    r = D.DATASETS["fashion-mnist"]
    assert [f for f, _ in r.files] == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert D.url_of("fashion-mnist", filename="t10k-labels-idx1-ubyte.gz") == \
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz"
    with pytest.raises(UserError, match="each with its own checksum"):
        D.download("fashion-mnist", Path("/nonexistent-never-created"), checksum="0" * 32,
                   base_url="http://127.0.0.1:9/none")
