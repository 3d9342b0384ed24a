"""JPEG decoding and encoding: TorchCodec where it is installed, torchvision's public codecs
otherwise.

torchvision 0.29 deprecates ``torchvision.io``'s decoders and encoders in favour of TorchCodec,
whose ``decode_jpeg`` / ``JpegEncoder`` are the same libjpeg-turbo and nvJPEG code (the output
is byte-identical; tests/test_jpeg.py checks it). Older stacks (torchvision 0.26 with no
TorchCodec, as on some GPU machines) use ``torchvision.io.decode_jpeg`` / ``encode_jpeg``.
Every path returns uint8 3×H×W RGB: grey and CMYK records come out as RGB. :func:`jpeg_bytes` is the
one encoder of images into JPEG files (``prepare``, the in-memory writer, the benchmark fixtures);
both libraries encode with libjpeg-turbo's standard tables, as Pillow does.

On CUDA, a batch is decoded on a stream of its own and handed to the caller's stream in order
(see :func:`ordered_on_stream`).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch

_backend: str | None = None  # "torchcodec" or "torchvision", decided on first use


def backend() -> str:
    """The library that decodes and encodes: ``"torchcodec"`` when it imports, else ``"torchvision"``."""
    global _backend
    if _backend is None:
        try:
            from torchcodec.decoders import decode_jpeg  # noqa: F401
            from torchcodec.encoders import JpegEncoder  # noqa: F401

            _backend = "torchcodec"
        except Exception:  # not installed, or its native libraries do not load on this stack
            _backend = "torchvision"
    return _backend


def _torchvision() -> Any:
    import torchvision.io as tio

    return tio


def _tv(name: str, *args: Any, **kwargs: Any) -> Any:
    """``torchvision.io.<name>(*args, **kwargs)``. torchvision >= 0.29 warns on every call that
    its codecs are deprecated in favour of TorchCodec; they are used only where TorchCodec is not
    installed, so that notice is not repeated for every image."""
    tio = _torchvision()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        return getattr(tio, name)(*args, **kwargs)


def decode_jpeg_rgb(data: torch.Tensor) -> torch.Tensor:
    """JPEG bytes (1-D uint8 CPU tensor) -> uint8 3×H×W RGB on the CPU (libjpeg-turbo)."""
    if backend() == "torchcodec":
        from torchcodec.decoders import decode_jpeg

        return decode_jpeg(data, mode="RGB")
    return _tv("decode_jpeg", data, mode=_torchvision().ImageReadMode.RGB)


def encode_jpeg(chw: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 3×H×W RGB -> JPEG bytes (1-D uint8 tensor)."""
    if backend() == "torchcodec":
        from torchcodec.encoders import JpegEncoder

        return JpegEncoder(chw).to_tensor(quality=quality)
    return _tv("encode_jpeg", chw, quality=quality)


def jpeg_bytes(img_hwc: np.ndarray, quality: int = 90) -> bytes:
    """A uint8 H×W×3 RGB array -> the bytes of a JPEG file at ``quality`` (1-100)."""
    # Writable and C-ordered (copied only when not, e.g. np.asarray of a Pillow image is
    # read-only, which torch.from_numpy warns about); 3×H×W is what the encoders take.
    hwc = np.require(img_hwc, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])
    return encode_jpeg(torch.from_numpy(hwc).permute(2, 0, 1).contiguous(), quality).numpy().tobytes()


def _decode_batch_cuda(records: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:  # pragma: no cover - needs a GPU
    """Batched nvJPEG decode of CPU byte tensors onto ``device`` (one call for the whole list)."""
    if backend() == "torchcodec":
        from torchcodec.decoders import decode_jpeg

        return list(decode_jpeg(records, mode="RGB", device=device))
    return list(_tv("decode_jpeg", records, mode=_torchvision().ImageReadMode.RGB, device=device))


_streams: dict[Any, Any] = {}


def ordered_on_stream(decode: Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]],
                      records: list[torch.Tensor], device: torch.device, cuda: Any = None) -> list[torch.Tensor]:
    """Run ``decode`` on a dedicated stream and order its outputs before the caller's stream.

    The nvJPEG decoders (torchvision's and TorchCodec's) allocate their outputs on the current
    stream but write them on a stream of their own, without waiting for the current stream: a
    buffer the caching allocator hands out again while kernels queued on the current stream still
    read it would be overwritten under them (silent corruption, or a device-side assert). Here the
    "current" stream during the call is a private one, so the outputs come from memory only this
    decoder uses; the caller's stream then waits for the decode, and ``record_stream`` keeps each
    output's memory from being reused before the caller's queued work on it has run. The decode is
    not made to wait for the caller's stream, so it overlaps the previous training step.
    ``cuda`` is the ``torch.cuda`` module (a stand-in in tests)."""
    cuda = cuda if cuda is not None else torch.cuda
    caller = cuda.current_stream(device)
    key = (id(cuda), str(device))
    if key not in _streams:
        _streams[key] = cuda.Stream(device)
    stream = _streams[key]
    with cuda.stream(stream):
        out = decode(records, device)
    caller.wait_stream(stream)
    for t in out:
        t.record_stream(caller)
    return out


def decode_jpegs_rgb(records: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """A batch of JPEG records (CPU byte tensors) -> uint8 3×H×W RGB tensors on ``device``:
    nvJPEG on CUDA (one batched call), libjpeg-turbo otherwise."""
    if device.type == "cuda":  # pragma: no cover - needs a GPU
        return ordered_on_stream(_decode_batch_cuda, records, device)
    return [decode_jpeg_rgb(r).to(device) for r in records]
