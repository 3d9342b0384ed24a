"""JPEG codecs: TorchCodec where installed, torchvision's public decoders otherwise (the same
pixels either way), the one encoder (the bytes both libraries' encoders write), and the stream
ordering around the batched nvJPEG decode."""

from __future__ import annotations

import io
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data import jpeg


def _jpegs() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:37, 0:53]
    img = np.clip(rng.uniform(0, 255, 3) + 2.0 * (x + y)[..., None] + rng.normal(0, 25, (37, 53, 3)), 0, 255)
    pil = Image.fromarray(img.astype(np.uint8))
    out = {}
    for name, im, kw in [("rgb-420", pil, {"quality": 90}), ("rgb-444", pil, {"quality": 95, "subsampling": 0}),
                         ("progressive", pil, {"quality": 80, "progressive": True}), ("grey", pil.convert("L"), {}),
                         ("cmyk", pil.convert("CMYK"), {})]:
        b = io.BytesIO()
        im.save(b, "JPEG", **kw)
        out[name] = torch.frombuffer(bytearray(b.getvalue()), dtype=torch.uint8)
    return out


@pytest.fixture
def torchvision_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a stack without TorchCodec (torchvision 0.26 on the GPU machine): its import fails.
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    monkeypatch.setitem(sys.modules, "torchcodec.encoders", None)
    monkeypatch.setattr(jpeg, "_backend", None)


def _decode_all() -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation notice per image, whichever library decodes
        return {k: jpeg.decode_jpeg_rgb(v) for k, v in _jpegs().items()}


def test_fallback_without_torchcodec_decodes_to_rgb(torchvision_backend: None) -> None:
    assert jpeg.backend() == "torchvision"
    got = _decode_all()
    for k, img in got.items():
        assert img.dtype == torch.uint8 and img.shape == (3, 37, 53), k
    assert torch.equal(got["grey"][0], got["grey"][1]) and torch.equal(got["grey"][0], got["grey"][2])
    # Against Pillow (its own libjpeg): the same image up to IDCT rounding.
    ref = torch.from_numpy(np.array(Image.open(io.BytesIO(_jpegs()["rgb-444"].numpy().tobytes())).convert("RGB")))
    assert (got["rgb-444"].permute(1, 2, 0).int() - ref.int()).abs().max() <= 2


def test_torchcodec_is_byte_identical_to_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torchcodec.decoders")
    monkeypatch.setattr(jpeg, "_backend", None)
    assert jpeg.backend() == "torchcodec"
    ours = _decode_all()
    monkeypatch.setattr(jpeg, "_backend", "torchvision")
    theirs = _decode_all()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    img = ours["rgb-444"].contiguous()
    # The one encoder (Pillow's libjpeg-turbo) writes the bytes both libraries' encoders write:
    # prepared datasets do not depend on which library wrote them.
    from torchcodec.encoders import JpegEncoder
    from torchvision.io import encode_jpeg

    ours_bytes = jpeg.jpeg_bytes(img.permute(1, 2, 0).numpy(), quality=90)  # 3×H×W -> H×W×3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs_bytes = encode_jpeg(img, quality=90).numpy().tobytes()
    assert ours_bytes == JpegEncoder(img).to_tensor(quality=90).numpy().tobytes() == theirs_bytes


def test_encode_round_trip_without_torchcodec(torchvision_backend: None) -> None:
    y, x = np.mgrid[0:40, 0:48]
    img = np.clip(np.stack([4 * x, 5 * y, 2 * (x + y)], axis=-1), 0, 255).astype(np.uint8)  # smooth: JPEG keeps it closely
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = jpeg.decode_jpeg_rgb(torch.frombuffer(bytearray(jpeg.jpeg_bytes(img, quality=95)), dtype=torch.uint8))
    assert back.shape == (3, 40, 48)
    assert (back.permute(1, 2, 0).int() - torch.from_numpy(img).int()).abs().float().mean() < 2


def test_bad_bytes_raise() -> None:
    with pytest.raises(RuntimeError):
        jpeg.decode_jpeg_rgb(torch.frombuffer(bytearray(b"not a jpeg at all"), dtype=torch.uint8))


class _FakeCuda:
    """torch.cuda's stream API, recording what happens in which order."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.caller = _FakeStream("caller", self)
        self.current = self.caller
        self.made = 0

    def current_stream(self, device: object) -> "_FakeStream":
        return self.current

    def Stream(self, device: object) -> "_FakeStream":  # noqa: N802 (torch.cuda.Stream)
        self.made += 1
        return _FakeStream(f"decode{self.made}", self)

    def stream(self, s: "_FakeStream") -> "_Ctx":
        return _Ctx(self, s)


class _Ctx:
    def __init__(self, cuda: _FakeCuda, s: "_FakeStream") -> None:
        self.cuda, self.s = cuda, s

    def __enter__(self) -> None:
        self.prev, self.cuda.current = self.cuda.current, self.s

    def __exit__(self, *a: object) -> None:
        self.cuda.current = self.prev


class _FakeStream:
    def __init__(self, name: str, cuda: _FakeCuda) -> None:
        self.name, self.cuda = name, cuda

    def wait_stream(self, other: "_FakeStream") -> None:
        self.cuda.log.append(("wait", self.name, other.name))


class _Out:
    def __init__(self, i: int, cuda: _FakeCuda) -> None:
        self.i, self.cuda = i, cuda

    def record_stream(self, s: _FakeStream) -> None:
        self.cuda.log.append(("record", self.i, s.name))


def test_nvjpeg_decode_is_ordered_before_the_callers_stream() -> None:
    # The ordering logic of the CUDA path, with the stream API stood in for (no GPU here): the
    # decoder runs while a private stream is current (its outputs are allocated there), the
    # caller's stream then waits for it, and every output is recorded on the caller's stream.
    cuda = _FakeCuda()

    def decode(records: list, device: object) -> list:
        cuda.log.append(("decode", cuda.current.name, len(records)))
        return [_Out(i, cuda) for i in range(len(records))]

    for _ in range(2):
        out = jpeg.ordered_on_stream(decode, [object()] * 3, torch.device("cuda", 0), cuda=cuda)
        assert len(out) == 3 and cuda.current is cuda.caller
    one = [("decode", "decode1", 3), ("wait", "caller", "decode1"),
           ("record", 0, "caller"), ("record", 1, "caller"), ("record", 2, "caller")]
    assert cuda.log == one + one
    assert cuda.made == 1  # one stream per device, reused
