"""The built-in synthetic dataset (``--data synthetic``): ten shape classes, drawn in seconds.

Why it exists: the paper's results need ImageNet (§2), which cannot be bundled, and CIFAR needs a
download. This set is deterministic from a seed, needs no network, and is built so that the
paper's ingredients have something to do:

* the class is carried by *shape* only. Shape colour, background colour, position, scale,
  rotation, lighting, clutter and noise are drawn independently of the class, so neither the mean
  colour nor a fixed pixel template gives the class away;
* the scene is rendered a little larger than the network input (36 for a 32×32 net, 256 for
  224, as §2 stores 256×256 images for 224×224 crops) and the shape may sit off-centre, so random
  crops (§4.1, augmentation 1) change what the network sees;
* every shape class is closed under rotation and horizontal reflection, so flips are label
  preserving, as the paper assumes for ImageNet;
* colour and lighting vary smoothly (gradients, a colour cast, an illumination ramp), which is what
  the PCA colour noise of §4.1 (augmentation 2) imitates;
* anti-aliased edges, colour blobs and thin lines are what first-layer filters learn (Figure 3).

Rendering is a vectorised numpy evaluation of signed distance functions on a pixel grid; a
shape's coverage of a pixel is ``clip(0.5 - sdf / pixel, 0, 1)`` which anti-aliases its edge.
The scene lives in resolution-independent coordinates ([-1, 1]², y downwards), so the same
(seed, split, index) gives the same scene at any size (only the pixel noise differs).

Every image is a pure function of ``(seed, split, index)``: its parameters and noise come from
``np.random.default_rng([seed, split_id, index])``, so a subset, another order or another chunking
gives identical bytes. The label of index ``i`` is ``i % 10``, so any run of consecutive indices is
balanced.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from alexnet.data.format import DatasetError, is_prepared
from alexnet.data.writer import write_arrays
from alexnet.errors import UserError

# Bump when the rendering or what is stored changes: it is part of the cache folder name and of
# meta.json's "source", so a cached dataset drawn by an older generator is never reused by mistake.
# 2: the statistics' pixel sample is seeded per image, as prepare seeds it (version 1 drew it from
# one sequential generator: the same mean image, slightly different RGB eigenvectors).
GENERATOR_VERSION = 2

CLASS_NAMES: list[str] = [
    "circle", "ring", "square", "triangle", "star", "cross", "crescent", "bar", "heart", "pair",
]
CLASS_DESCRIPTIONS: list[str] = [
    "filled circle", "ring (annulus)", "square", "equilateral triangle", "five-pointed star",
    "plus-shaped cross", "crescent", "long bar", "heart", "pair of discs",
]
NUM_CLASSES = len(CLASS_NAMES)

SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

# Per-image uniforms: a fixed count, drawn first from the image's generator, so the layout below
# can grow (up to this count) without shifting the noise stream.
_N_UNIFORMS = 128
_N_LINES = 4
_N_BLOBS = 4
_LAYOUT: tuple[tuple[str, int], ...] = (
    ("centre", 2), ("scale", 1), ("angle", 1), ("aspect", 1),
    ("fg_hsv", 3), ("shade", 2),  # shading amount and direction across the shape
    ("bg1_hsv", 3), ("bg2_hsv", 3), ("bg_grad", 2),  # gradient direction and sharpness
    ("waves", 8),  # two low-frequency brightness undulations: frequency, direction, phase, amplitude
    ("light", 3),  # illumination ramp: direction, strength, ambient level
    ("shadow", 2),  # drop-shadow length and strength (cast away from the light)
    ("cast", 3),  # per-channel gain: the colour of the illuminant
    ("lines", 9 * _N_LINES),  # presence, centre x/y, direction, length, width, h, s, v
    ("blobs", 7 * _N_BLOBS),  # presence, centre x/y, radius (well below the pair's discs), h, s, v
    ("noise", 1), ("contrast", 1),
)
_SLICES: dict[str, slice] = {}
_off = 0
for _name, _count in _LAYOUT:
    _SLICES[_name] = slice(_off, _off + _count)
    _off += _count
assert _off <= _N_UNIFORMS
del _off, _name, _count

_MIN_SIZE = 8
# Pixels per rendering chunk (B×H×W): float32 temporaries of 1 MB stay near the caches (measured
# fastest among 2^14..2^20).
_CHUNK_PIXELS = 1 << 18


# ---------------------------------------------------------------------------------------------
# Signed distance functions of the ten shapes, in the shape's own unit frame (extent about ±1).
# Negative inside. u, v: float32 arrays of any (equal) shape.


def _box(u: np.ndarray, v: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx = np.abs(u) - hx
    qy = np.abs(v) - hy
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hypot(u, v) - 0.8


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(np.hypot(u, v) - 0.7) - 0.22  # outer radius 0.92, hole 0.48


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _box(u, v, 0.7, 0.7)


_TRI_NORMALS = np.array([[np.cos(a), np.sin(a)] for a in np.deg2rad([-90.0, 30.0, 150.0])], np.float32)


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral, circumradius 1.05 (inradius 0.525), centroid at the origin: the largest of the
    # three edge half-plane distances (exact along the edges, which is all anti-aliasing needs).
    d = u * _TRI_NORMALS[0, 0] + v * _TRI_NORMALS[0, 1]
    for nx, ny in _TRI_NORMALS[1:]:
        d = np.maximum(d, u * nx + v * ny)
    return d - 0.525


_STAR_TIP = np.array([1.05, 0.0], np.float32)
_STAR_INNER = 0.47 * np.array([np.cos(np.pi / 5), np.sin(np.pi / 5)], np.float32)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Exact five-pointed star: fold the plane into one 36° half-sector (symmetry), then measure
    # the distance to the single edge from the tip to the inner vertex. A union of convex pieces
    # would leave half-covered seams where the pieces meet.
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    sector = np.float32(2 * np.pi / 5)
    phi = np.abs(np.mod(phi + sector / 2, sector) - sector / 2)  # in [0, 36°]
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    ex, ey = _STAR_INNER - _STAR_TIP
    ax, ay = px - _STAR_TIP[0], py - _STAR_TIP[1]
    h = np.clip((ax * ex + ay * ey) / (ex * ex + ey * ey), 0, 1)
    dist = np.hypot(ax - h * ex, ay - h * ey)
    # Inside when the point is on the origin's side of the tip→inner edge.
    cross = ex * ay - ey * ax
    return np.where(cross < 0, -dist, dist)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.minimum(_box(u, v, 0.9, 0.26), _box(u, v, 0.26, 0.9))


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    u = u + 0.12  # centre the crescent's bounding box
    return np.maximum(np.hypot(u, v) - 0.88, -(np.hypot(u - 0.45, v) - 0.7))


def _bar(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _box(u, v, 1.0, 0.21)


_SQRT_HALF = np.float32(np.sqrt(0.5))


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # A square turned 45° with a disc on each of its two upper edges.
    s = 1.05
    u, v = u / s, -v / s + 0.07  # lobes upwards in the unit frame, bounding box centred
    a, b = (u + v) * _SQRT_HALF, (v - u) * _SQRT_HALF
    body = _box(a, b, 0.45, 0.45)
    lobes = np.minimum(np.hypot(u - 0.318, v - 0.318), np.hypot(u + 0.318, v - 0.318)) - 0.45
    return np.minimum(body, lobes) * s


def _pair(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Gap 0.3 between the discs: still two pixels at the smallest scale of a 36-pixel image.
    return np.minimum(np.hypot(u - 0.55, v), np.hypot(u + 0.55, v)) - 0.4


_SHAPES: list[Callable[[np.ndarray, np.ndarray], np.ndarray]] = [
    _circle, _ring, _square, _triangle, _star, _cross, _crescent, _bar, _heart, _pair,
]
assert len(_SHAPES) == NUM_CLASSES


# ---------------------------------------------------------------------------------------------
# Rendering


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; hsv: (..., 3)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = np.mod(np.array([5.0, 3.0, 1.0], np.float32) + h[..., None] * 6, 6)  # (..., 3)
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def _lerp(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (lo + (hi - lo) * u).astype(np.float32)


def _col(x: np.ndarray) -> np.ndarray:
    """(B,) -> (B, 1, 1) to broadcast per-image parameters over the pixel grid."""
    return x.reshape(-1, 1, 1)


def _coverage(sdf: np.ndarray, width: float) -> np.ndarray:
    return np.clip(0.5 - sdf / width, 0, 1)


def _split_id(split: str | int) -> int:
    if isinstance(split, str):
        if split not in SPLIT_IDS:
            raise UserError(f"synthetic split {split!r}: unknown; accepted: {', '.join(SPLIT_IDS)} or an integer >= 0")
        return SPLIT_IDS[split]
    if int(split) < 0:
        raise UserError(f"synthetic split {split}: must be >= 0")
    return int(split)


def _render_class(label: int, uni: np.ndarray, noise: np.ndarray, size: int) -> np.ndarray:
    """Render B images of one class. uni: (B, _N_UNIFORMS) in [0, 1); noise: (B, H, W, 3)
    standard normal. Returns float32 (B, H, W, 3) on the 0–255 scale, unclipped."""
    f = {name: uni[:, sl].astype(np.float32) for name, sl in _SLICES.items()}
    pix = 2.0 / size  # one pixel in scene units
    grid = ((np.arange(size, dtype=np.float32) + 0.5) * pix - 1).astype(np.float32)
    X = grid[None, None, :]  # (1, 1, W)
    Y = grid[None, :, None]  # (1, H, 1)
    img, bg1, bg2 = _background(f, X, Y, size)
    _clutter(img, f, X, Y, pix)
    _object(img, f, X, Y, pix, _SHAPES[label], 0.5 * (bg1 + bg2))
    # --- illumination over the whole scene: a ramp, an ambient level and a coloured illuminant
    light_dir = f["light"][:, 0] * 2 * np.pi
    ramp = _col(_lerp(f["light"][:, 2], 0.75, 1.1)) + _col(_lerp(f["light"][:, 1], 0, 0.35)) * (
        X * _col(np.cos(light_dir)) + Y * _col(np.sin(light_dir)))
    cast = _lerp(f["cast"], 0.9, 1.1)  # (B, 3)
    img *= np.maximum(ramp, 0.15)[..., None] * cast[:, None, None, :]
    # --- sensor noise
    sigma = _lerp(f["noise"][:, 0], 0.004, 0.03)
    img += sigma[:, None, None, None] * noise
    return img * 255


def _background(f: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray,
                size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A two-colour gradient with soft undulations: (B, H, W, 3) and the two colours (B, 3)."""
    b = len(f["bg_grad"])
    bg1 = _hsv_to_rgb(np.stack([f["bg1_hsv"][:, 0], _lerp(f["bg1_hsv"][:, 1], 0, 0.65),
                                _lerp(f["bg1_hsv"][:, 2], 0.2, 0.95)], -1))  # (B, 3)
    bg2 = _hsv_to_rgb(np.stack([f["bg2_hsv"][:, 0], _lerp(f["bg2_hsv"][:, 1], 0, 0.65),
                                _lerp(f["bg2_hsv"][:, 2], 0.2, 0.95)], -1))
    ga = _col(f["bg_grad"][:, 0] * 2 * np.pi)
    sharp = _col(_lerp(f["bg_grad"][:, 1], 0.4, 3.0))
    t = 0.5 + 0.5 * np.tanh(sharp * (X * np.cos(ga) + Y * np.sin(ga)))  # (B, H, W)
    img = bg1[:, None, None, :] * (1 - t[..., None]) + bg2[:, None, None, :] * t[..., None]  # (B, H, W, 3)
    undulation = np.ones((b, size, size), np.float32)
    for w in range(2):
        freq, direc, phase, amp = (f["waves"][:, 4 * w + j] for j in range(4))
        wa = _col(direc * 2 * np.pi)
        undulation += _col(_lerp(amp, 0, 0.12)) * np.sin(
            _col(_lerp(freq, 1.0, 4.0)) * (X * np.cos(wa) + Y * np.sin(wa)) + _col(phase * 2 * np.pi))
    img *= undulation[..., None]
    return img, bg1, bg2


def _clutter(img: np.ndarray, f: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray, pix: float) -> None:
    """Behind the object, in place: thin line segments and small blobs of unrelated colours."""
    for k in range(_N_LINES):
        p = f["lines"][:, 9 * k : 9 * k + 9]
        present = p[:, 0] < 0.4
        cx, cy = _col(_lerp(p[:, 1], -1, 1)), _col(_lerp(p[:, 2], -1, 1))
        la = p[:, 3] * np.pi
        half = _lerp(p[:, 4], 0.1, 0.6)
        ex, ey = _col(np.cos(la) * half), _col(np.sin(la) * half)
        # distance to the segment from (c - e) to (c + e)
        ax, ay = X - cx + ex, Y - cy + ey
        h = np.clip((ax * ex + ay * ey) / (2 * (ex * ex + ey * ey)), 0, 1)
        dist = np.hypot(ax - 2 * h * ex, ay - 2 * h * ey) - _col(_lerp(p[:, 5], 0.015, 0.035))
        alpha = _coverage(dist, pix) * _col(present.astype(np.float32))
        col = _hsv_to_rgb(np.stack([p[:, 6], _lerp(p[:, 7], 0, 0.9), _lerp(p[:, 8], 0.05, 1)], -1))
        img += alpha[..., None] * (col[:, None, None, :] - img)
    for k in range(_N_BLOBS):
        p = f["blobs"][:, 7 * k : 7 * k + 7]
        present = p[:, 0] < 0.5
        dist = np.hypot(X - _col(_lerp(p[:, 1], -1, 1)), Y - _col(_lerp(p[:, 2], -1, 1))) - _col(_lerp(p[:, 3], 0.03, 0.07))
        alpha = _coverage(dist, pix) * _col(present.astype(np.float32))
        col = _hsv_to_rgb(np.stack([p[:, 4], _lerp(p[:, 5], 0, 1), _lerp(p[:, 6], 0.05, 1)], -1))
        img += alpha[..., None] * (col[:, None, None, :] - img)


def _object(img: np.ndarray, f: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray, pix: float,
            fn: Callable[[np.ndarray, np.ndarray], np.ndarray], bgm: np.ndarray) -> None:
    """The class's shape (signed distance ``fn``), in place: pose, a drop shadow, then the shaded
    shape in a colour kept apart from the background's average ``bgm``."""
    scale = _lerp(f["scale"][:, 0], 0.38, 0.62)
    lim = 0.97 - scale  # the centre may sit anywhere that keeps most of the shape in view
    ocx = (f["centre"][:, 0] * 2 - 1) * lim
    ocy = (f["centre"][:, 1] * 2 - 1) * lim
    rot = f["angle"][:, 0] * 2 * np.pi
    aspect = _lerp(f["aspect"][:, 0], 0.87, 1.15)
    light_dir = f["light"][:, 0] * 2 * np.pi

    def local(dx: float | np.ndarray, dy: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # scene -> the shape's unit frame: translate, rotate, scale anisotropically
        x0, y0 = X - _col(ocx + dx), Y - _col(ocy + dy)
        c, s = _col(np.cos(rot)), _col(np.sin(rot))
        u = (c * x0 + s * y0) / _col(scale * aspect)
        v = (-s * x0 + c * y0) / _col(scale / aspect)
        return u, v

    shadow_len = _lerp(f["shadow"][:, 0], 0.02, 0.09)
    su, sv = local(-np.cos(light_dir) * shadow_len, -np.sin(light_dir) * shadow_len)
    soft = max(pix, 0.06)  # a blurred penumbra, the same in scene units at every size
    shadow = _coverage(fn(su, sv) * _col(scale), soft) * _col(_lerp(f["shadow"][:, 1], 0, 0.5))
    img *= (1 - shadow)[..., None]

    u, v = local(0.0, 0.0)
    cover = _coverage(fn(u, v) * _col(scale), pix)  # sdf back in scene units, then anti-aliased
    fg = _hsv_to_rgb(np.stack([f["fg_hsv"][:, 0], _lerp(f["fg_hsv"][:, 1], 0.25, 1),
                               _lerp(f["fg_hsv"][:, 2], 0.3, 1)], -1))  # (B, 3)
    # Keep the object visible: if its colour is too close to the background's average, move it
    # away (whichever direction, after clipping, gives the larger difference). Independent of class.
    diff = fg - bgm
    dist = np.linalg.norm(diff, axis=-1, keepdims=True)
    grey = np.where(f["contrast"] < 0.5, -1.0, 1.0).astype(np.float32) * np.float32(1 / np.sqrt(3))
    direction = np.where(dist > 1e-3, diff / np.maximum(dist, 1e-3), grey)
    cand_a = np.clip(bgm + 0.5 * direction, 0, 1)
    cand_b = np.clip(bgm - 0.5 * direction, 0, 1)
    better = np.where(np.linalg.norm(cand_a - bgm, axis=-1, keepdims=True)
                      >= np.linalg.norm(cand_b - bgm, axis=-1, keepdims=True), cand_a, cand_b)
    fg = np.where(dist < 0.35, better, fg).astype(np.float32)
    sd = _col(f["shade"][:, 1] * 2 * np.pi)
    shading = 1 + _col(_lerp(f["shade"][:, 0], 0, 0.35)) * np.clip(u * np.cos(sd) + v * np.sin(sd), -1.2, 1.2)
    img += cover[..., None] * (fg[:, None, None, :] * shading[..., None] - img)


def render(indices: Sequence[int] | np.ndarray, size: int, seed: int = 0, *,
           split: str | int = "train") -> tuple[np.ndarray, np.ndarray]:
    """The images with the given indices: uint8 N×size×size×3 and int64 labels (``index % 10``).
    Each image depends only on (seed, split, index), never on which others are drawn with it."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if size < _MIN_SIZE:
        raise UserError(f"synthetic image size {size}: must be at least {_MIN_SIZE}")
    if len(idx) and idx.min() < 0:
        raise UserError(f"synthetic index {int(idx.min())}: must be >= 0")
    sid = _split_id(split)
    labels = idx % NUM_CLASSES
    out = np.empty((len(idx), size, size, 3), dtype=np.uint8)
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    for label in range(NUM_CLASSES):
        where = np.flatnonzero(labels == label)
        for lo in range(0, len(where), chunk):
            pos = where[lo : lo + chunk]
            uni = np.empty((len(pos), _N_UNIFORMS), np.float64)
            noise = np.empty((len(pos), size, size, 3), np.float32)
            for j, i in enumerate(idx[pos]):
                rng = np.random.default_rng([int(seed), sid, int(i)])
                uni[j] = rng.random(_N_UNIFORMS)
                noise[j] = rng.standard_normal((size, size, 3), dtype=np.float32)
            img = _render_class(label, uni, noise, size)
            out[pos] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out, labels


def generate(n: int, size: int, seed: int = 0, *, split: str | int = "train",
             start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start .. start+n-1`` of a split: uint8 n×size×size×3 and int64 labels, classes
    in turn (0, 1, …, 9, 0, …), so balanced whenever n is a multiple of 10."""
    if n < 0:
        raise UserError(f"synthetic image count {n}: must be >= 0")
    return render(np.arange(start, start + n), size, seed, split=split)


# ---------------------------------------------------------------------------------------------
# Writing prepared datasets


def default_size(input_size: int) -> int:
    """Stored image size for a network input: the paper's 256/224 margin (§2, §4.1), even.
    32 -> 36, 224 -> 256."""
    return int(round(input_size * 256 / 224 / 2)) * 2


def _source(size: int, seed: int, train_per_class: int, val_per_class: int) -> dict[str, object]:
    return {"type": "synthetic", "generator_version": GENERATOR_VERSION, "seed": seed, "size": size,
            "train_per_class": train_per_class, "val_per_class": val_per_class}


def build(out: str | os.PathLike[str], *, size: int = 36, train_per_class: int = 500,
          val_per_class: int = 100, seed: int = 0) -> Path:
    """Draw the train and val splits (different split ids, hence different images) and write them
    as a raw-encoded prepared dataset at ``out``; returns its path."""
    for name, value in (("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        if value < 1:
            raise UserError(f"synthetic {name} {value}: must be at least 1")
    train = generate(train_per_class * NUM_CLASSES, size, seed, split="train")
    val = generate(val_per_class * NUM_CLASSES, size, seed, split="val")
    # Small images raw (fastest to read); large ones as JPEG q90, as prepare stores photos
    # (6,000 raw 256×256 images would take 1.2 GB).
    return write_arrays(out, {"train": train, "val": val}, classes=CLASS_NAMES, class_names=CLASS_DESCRIPTIONS,
                        source=_source(size, seed, train_per_class, val_per_class),
                        encoding="raw" if size <= 64 else "jpeg")


def cache_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root``, else $ALEXNET_CACHE, else ~/.cache/alexnet; refused at once where it cannot be a
    folder (a file is there)."""
    env = os.environ.get("ALEXNET_CACHE")
    path, what = (Path(root), str(root)) if root is not None else (
        (Path(env), f"ALEXNET_CACHE={env}") if env else (Path.home() / ".cache" / "alexnet", "the cache folder"))
    if path.exists() and not path.is_dir():
        raise UserError(f"{what}: not a folder (a file is there); point it at a folder")
    return path


def _remove_orphans(out: Path) -> None:
    """Staging folders (and their lock files) of builders that were killed outright (SIGKILL, a
    power cut: no cleanup ran); a builder still alive keeps its own."""
    for p in [*out.parent.glob(f".{out.name}.*"), *out.parent.glob(f"..{out.name}.*")]:
        pid = p.name.lstrip(".")[len(out.name) + 1:].split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except OSError:
            continue  # alive, but another user's
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def cached(input_size: int, *, seed: int = 0, train_per_class: int = 500, val_per_class: int = 100,
           root: str | os.PathLike[str] | None = None) -> Path:
    """The synthetic dataset for a network of ``input_size``, built once into the cache folder
    (``root``, else $ALEXNET_CACHE, else ~/.cache/alexnet) and reused afterwards.

    Safe when several processes ask at once: each builds into its own staging folder and renames
    it into place; a process that finds the place taken uses the dataset already there. (The
    writer's own ``<out>.partial`` is shared and cleared by every new writer, so two writers of
    the same ``out`` would destroy each other's work.)
    """
    size = default_size(input_size)
    out = cache_root(root) / (f"synthetic-v{GENERATOR_VERSION}-s{size}-seed{seed}-{train_per_class}-{val_per_class}")
    if is_prepared(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out)
    staging = out.parent / f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build(staging, size=size, train_per_class=train_per_class, val_per_class=val_per_class, seed=seed)
        try:
            # rename(2) replaces at most an empty folder: it fails if another process got there first.
            os.rename(staging, out)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) and not out.exists():
                raise
            if not is_prepared(out):
                raise DatasetError(f"{out}: exists but is not a complete prepared dataset; remove it") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(Path(str(staging) + ".partial"), ignore_errors=True)
    return out
