"""Image files -> 8-bit RGB: the one image reader. ``prepare`` decodes every source file with
:func:`load_image`, and the commands that read image files (``predict``, ``neighbors``, through
``engine.inference``) with :func:`read_image`, so an image converts the same way wherever it is read.

Decoding is Pillow's. Every mode becomes 8-bit RGB (:func:`_to_rgb`, recording what was converted:
16-bit samples scaled by 1/257, CMYK, palette, alpha composited onto white, grey); what cannot be
used (zero bytes, truncated, not an image, a decompression bomb, a file too large to be an image)
raises :class:`Skip` with a code of ``sources.base.SKIPPED``. :func:`fit` is §2's "shorter side to
256, central 256×256 patch".
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from alexnet.data.sources.base import IMAGE_MAGIC, SKIPPED, oversized
from alexnet.errors import UserError

_EXT_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP",
               ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}


class Skip(Exception):
    """A file that cannot be used: ``code`` (a key of ``sources.base.SKIPPED``) and a detail."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code, self.detail = code, detail


def fit(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Rescale so the image covers ``size`` (H, W) with its shorter side and crop the centre: for
    a square size, §2's "shorter side to 256, central 256×256 patch". One resize of just the
    central region (``box``) does both, without the rounding of a resize-then-crop."""
    th, tw = size
    w, h = im.size
    if (w, h) == (tw, th):
        return im
    scale = max(tw / w, th / h)
    cw, ch = tw / scale, th / scale  # the crop, in source pixels
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return im.resize((tw, th), Image.Resampling.BILINEAR, box=box)  # antialiased when shrinking


def _to_rgb(im: Image.Image, codes: list[str]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, recording what was converted."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        codes.append("palette")
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    elif mode == "CMYK":
        codes.append("cmyk")  # Pillow already undid Adobe's inverted CMYK while decoding
        return im.convert("RGB")
    elif mode.startswith("I") or mode == "F":
        codes.append("grayscale")
        a = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0  # 16-bit samples to 8 bits
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2))  # H×W -> H×W×3
    elif mode in ("L", "1"):
        codes.append("grayscale")
        return im.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if mode in ("LA", "La"):
            codes.append("grayscale")
        codes.append("alpha")
        rgba = im.convert("RGBA")
        # Transparent pixels show the page behind them; white is what a viewer shows, and it
        # keeps whatever colour hides under alpha 0 out of the data.
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    codes.append("mode")
    return im.convert("RGB")


def load_image(data: bytes, name: str, size: tuple[int, int] | None = None) -> tuple[Image.Image, list[str], str]:
    """Decode file bytes to an RGB image (fitted to ``size`` when given), with conversion codes
    and a detail string; raises Skip for what cannot be used."""
    if len(data) == 0:
        raise Skip("zero_byte")
    codes: list[str] = []
    detail = ""
    with warnings.catch_warnings():
        # Pillow only warns between 1× and 2× its pixel limit; beyond the limit is a bomb either way.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Skip("decompression_bomb", str(e)) from None
        except UnidentifiedImageError:
            raise Skip("truncated" if data.startswith(IMAGE_MAGIC) else "not_image") from None
        except Exception as e:
            raise Skip("truncated", f"{type(e).__name__}: {e}") from None
        expected = _EXT_FORMAT.get(PurePosixPath(name).suffix.lower())
        if expected is not None and im.format != expected:
            codes.append("format_mismatch")
            detail = f"{im.format} data in a {PurePosixPath(name).suffix} file"
        try:
            if size is not None and im.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling) when that still
                # covers the target: large photos decode several times faster.
                s = max(size[0] / im.size[1], size[1] / im.size[0])
                im.draft(im.mode, (math.ceil(im.size[0] * s), math.ceil(im.size[1] * s)))
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Skip("decompression_bomb", str(e)) from None
        except Exception as e:  # truncated data, broken Huffman tables, bad CRC...
            raise Skip("truncated", f"{type(e).__name__}: {e}") from None
    try:
        im = _to_rgb(im, codes)
        if size is not None:
            im = fit(im, size)
    except Exception as e:
        raise Skip("truncated", f"{type(e).__name__}: {e}") from None
    return im, codes, detail


def read_file(path: str | os.PathLike[str]) -> bytes:
    """An image file's bytes; a file too large to be an image is judged by its size and first
    bytes and never read whole (Skip)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            bad = oversized(head, os.fstat(f.fileno()).st_size)
            if bad is not None:
                raise Skip(*bad)
            return head + f.read()
    except OSError as e:
        raise Skip("unreadable", e.strerror or str(e)) from None


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """An image file as 8-bit RGB, converted exactly as ``prepare`` converts it (16-bit samples
    scaled by 1/257, CMYK, palette, alpha composited onto white); anything unusable is a
    UserError naming the file and the reason. The one reader of image files for every command."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such image file")
    try:
        return load_image(read_file(p), p.name)[0]
    except Skip as s:
        reason = SKIPPED.get(s.code, s.code)
        raise UserError(f"{p}: {reason}" + (f" ({s.detail.splitlines()[0][:200]})" if s.detail else "")) from None
