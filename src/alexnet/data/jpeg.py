"""JPEG decoding: TorchCodec where it is installed, torchvision's public decoders otherwise; and
the one JPEG encoder, :func:`jpeg_bytes` (Pillow).

torchvision 0.29 deprecates ``torchvision.io``'s decoders in favour of TorchCodec, whose
``decode_jpeg`` is the same libjpeg-turbo and nvJPEG code (the output is byte-identical;
tests/test_jpeg.py checks it). Older stacks (torchvision 0.26 with no TorchCodec, as on some GPU
machines) use ``torchvision.io.decode_jpeg``. Every path returns uint8 3×H×W RGB: grey and CMYK
records come out as RGB. :func:`jpeg_bytes` is the one encoder of image arrays into JPEG files
(``prepare``, the in-memory writer, the benchmark fixtures).

On CUDA, a batch is decoded on a stream of its own and handed to the caller's stream in order
(see :func:`ordered_on_stream`).
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

_backend: str | None = None  # "torchcodec" or "torchvision", decided on first use


def backend() -> str:
    """The library that decodes: ``"torchcodec"`` when it imports, else ``"torchvision"``."""
    global _backend
    if _backend is None:
        try:
            from torchcodec.decoders import decode_jpeg  # noqa: F401

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


def jpeg_bytes(img_hwc: np.ndarray, quality: int = 90) -> bytes:
    """A uint8 H×W×3 RGB array -> the bytes of a JPEG file at ``quality`` (1-100, 4:2:0 chroma)."""
    # Pillow's encoder: the libjpeg-turbo of TorchCodec's JpegEncoder and torchvision's
    # encode_jpeg, with the same tables and the same bytes out (tests/test_jpeg.py checks it),
    # about 2.5x faster per 256×256 image (no tensor round trip), and no torch thread pool to
    # enter in prepare's forked workers.
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img_hwc, dtype=np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


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
