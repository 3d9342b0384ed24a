"""Tiny real-format inputs for the prepare/download tests: ILSVRC-2012-layout archives (with a
devkit meta.mat written by scipy in the devkit's structure), bad files of every kind, CIFAR
pickles and IDX files. Everything is built in memory in milliseconds."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# The devkit lists synsets by ILSVRC2012_ID, an order that differs from sorted WNIDs (ID 1 is
# n02119789 kit fox in the real one). Here ID 1 sorts last, ID 2 first.
LEAVES = [(1, "n04000001", "delta, the fourth"), (2, "n01000002", "alpha"), (3, "n03000003", "gamma, gee"),
          (4, "n02000004", "beta")]
# Inner WordNet nodes (num_children > 0): their WNIDs sort first, to catch a missing leaf filter.
PARENTS = [(5, "n00000005", "entity", [1, 2]), (6, "n00000006", "whole", [3, 4])]
SORTED = sorted(w for _, w, _ in LEAVES)  # class index = position here
WORDS = {w: words for _, w, words in LEAVES}
COLORS = {"n01000002": (220, 30, 30), "n02000004": (30, 200, 40), "n03000003": (40, 60, 220),
          "n04000001": (230, 210, 20)}
BORDER = (128, 128, 128)


def image(w: int, h: int, color: tuple[int, int, int]) -> Image.Image:
    """``color`` in the central min(w, h) square, grey outside it: what §2's centre crop removes."""
    a = np.empty((h, w, 3), np.uint8)
    a[:] = BORDER
    m = min(w, h)
    y0, x0 = (h - m) // 2, (w - m) // 2
    a[y0:y0 + m, x0:x0 + m] = color
    return Image.fromarray(a)


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def jpeg(w: int, h: int, color: tuple[int, int, int]) -> bytes:
    return encode(image(w, h, color), "JPEG", quality=95)


def cmyk_jpeg(w: int, h: int, color: tuple[int, int, int]) -> bytes:
    return encode(image(w, h, color).convert("CMYK"), "JPEG", quality=95)


def bomb_png(w: int, h: int) -> bytes:
    """A PNG header claiming w×h pixels (beyond Pillow's limit) with almost no data."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def bad_files(color: tuple[int, int, int]) -> dict[str, tuple[bytes, str, str]]:
    """name -> (bytes, "converted" | "skipped", report code)."""
    good = jpeg(40, 30, color)
    rgba = image(30, 40, color).convert("RGBA")
    return {
        "cmyk.JPEG": (cmyk_jpeg(40, 30, color), "converted", "cmyk"),
        "png_inside.JPEG": (encode(image(40, 30, color), "PNG"), "converted", "format_mismatch"),
        "gray.JPEG": (encode(image(40, 30, color).convert("L"), "JPEG"), "converted", "grayscale"),
        "palette.png": (encode(image(40, 30, color).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
                        "converted", "palette"),
        "alpha.png": (encode(rgba, "PNG"), "converted", "alpha"),
        "truncated.JPEG": (good[: len(good) // 2], "skipped", "truncated"),
        "empty.JPEG": (b"", "skipped", "zero_byte"),
        "notes.JPEG": (b"this is not an image\n" * 4, "skipped", "not_image"),
        "bomb.png": (bomb_png(30000, 30000), "skipped", "decompression_bomb"),
    }


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w") as tf:
        for n, d in members:
            add(tf, n, d)
    return b.getvalue()


def meta_mat(leaves=LEAVES, parents=PARENTS) -> bytes:
    """A devkit meta.mat: the 'synsets' struct array with the devkit's fields."""
    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(i, w, words, f"gloss of {w}", 0, np.zeros((1, 0)), 0, 3) for i, w, words in leaves]
    rows += [(i, w, words, "", len(ch), np.array(ch, dtype=float), 1, 0) for i, w, words, ch in parents]
    rows.sort(key=lambda r: r[0])
    arr = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for k, r in enumerate(rows):
        for f, v in zip(fields, r):
            arr[k, 0][f] = v if isinstance(v, (str, np.ndarray)) else np.array([[float(v)]])
    b = io.BytesIO()
    scipy.io.savemat(b, {"synsets": arr})
    return b.getvalue()


@dataclass
class FakeImageNet:
    folder: Path
    train_counts: dict[str, int] = field(default_factory=dict)  # WNID -> images expected kept
    val_wnids: list[str] = field(default_factory=list)  # true WNID of each kept val image, file order
    bad: dict[str, tuple[str, str]] = field(default_factory=dict)  # member name -> (converted|skipped, code)
    gray: set[str] = field(default_factory=set)


def build_imagenet(folder: Path, *, per_class: int = 2, val_ids: list[int] | None = None, gt_extra: int = 0,
                   devkit: bool = True, bad: bool = True, traversal: bool = False,
                   corrupt_val: bool = False) -> FakeImageNet:
    """ILSVRC2012_img_train.tar (a tar of <WNID>.tar), ILSVRC2012_img_val.tar (flat) and
    ILSVRC2012_devkit_t12.tar.gz with data/meta.mat and the validation ground truth."""
    folder.mkdir(parents=True, exist_ok=True)
    fake = FakeImageNet(folder)
    inner: list[tuple[str, bytes]] = []
    for k, (_, wnid, _) in enumerate(LEAVES):
        # landscape and portrait images: the centre crop must work both ways
        members = [(f"{wnid}_{j}.JPEG",
                    jpeg(40 + 4 * j, 30, COLORS[wnid]) if j % 2 == 0 else jpeg(30, 44, COLORS[wnid]))
                   for j in range(per_class)]
        kept = per_class
        if bad and wnid == SORTED[0]:
            for name, (data, what, code) in bad_files(COLORS[wnid]).items():
                members.append((f"{wnid}_{name}", data))
                fake.bad[f"{wnid}_{name}"] = (what, code)
                kept += what == "converted"
                if code == "grayscale":
                    fake.gray.add(f"{wnid}_{name}")
        if traversal and wnid == SORTED[1]:
            members += [("../../escaped.JPEG", jpeg(40, 30, COLORS[wnid])),
                        ("/tmp/absolute.JPEG", jpeg(40, 30, COLORS[wnid]))]
            fake.bad["../../escaped.JPEG"] = ("skipped", "unsafe_path")
            fake.bad["/tmp/absolute.JPEG"] = ("skipped", "unsafe_path")
        fake.train_counts[wnid] = kept
        inner.append((f"{wnid}.tar", tar_bytes(members)))
    if traversal:
        inner.append(("../outside.tar", tar_bytes([("x.JPEG", jpeg(40, 30, BORDER))])))
        fake.bad["../outside.tar"] = ("skipped", "unsafe_path")
    (folder / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes(inner))

    # Validation: image N's true class is ground-truth line N, an ILSVRC2012_ID.
    ids = val_ids if val_ids is not None else [1, 2, 3, 4, 4, 3, 2, 1, 2]
    wnid_of = {i: w for i, w, _ in LEAVES}
    val_members = []
    for n, i in enumerate(ids, 1):
        name = f"ILSVRC2012_val_{n:08d}.JPEG"
        color = COLORS[wnid_of[i]]
        if bad and n == 2:
            val_members.append((name, cmyk_jpeg(50, 30, color)))
            fake.bad[name] = ("converted", "cmyk")
        elif bad and n == 3:
            data = jpeg(50, 30, color)
            val_members.append((name, data[: len(data) // 3]))
            fake.bad[name] = ("skipped", "truncated")
            continue
        else:
            val_members.append((name, jpeg(30 + 2 * n, 30, color)))
        fake.val_wnids.append(wnid_of[i])
    # Archive order differs from name order: labels must follow the file number, not the position.
    val_members = val_members[::-1]
    data = tar_bytes(val_members)
    if corrupt_val:
        data = data[:700]  # cut inside the first member: the header chain is broken
    (folder / "ILSVRC2012_img_val.tar").write_bytes(data)

    if devkit:
        gt = "\n".join(str(i) for i in ids + [1] * gt_extra) + "\n"
        b = io.BytesIO()
        with tarfile.open(fileobj=b, mode="w:gz") as tf:
            add(tf, "ILSVRC2012_devkit_t12/data/meta.mat", meta_mat())
            add(tf, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", gt.encode())
            add(tf, "ILSVRC2012_devkit_t12/readme.txt", b"devkit\n")
        (folder / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(b.getvalue())
    return fake


def nearest_class(img_chw, classes: list[str]) -> str:
    """The WNID whose colour is closest to the mean of the image's centre."""
    a = np.asarray(img_chw, dtype=np.float64)
    h, w = a.shape[1:]
    c = a[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4].reshape(3, -1).mean(1)
    return min(classes, key=lambda wn: float(((np.array(COLORS[wn]) - c) ** 2).sum()))


# ---------------------------------------------------------------------------------------------
# CIFAR and IDX


def cifar_arrays(n: int, classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    labels = [int(v) for v in rng.integers(0, classes, n)]
    x = np.zeros((n, 3, 32, 32), np.uint8)
    for k, lab in enumerate(labels):
        x[k, 0] = lab * 2  # red plane encodes the label
        x[k, 1] = k % 256  # green plane the index
        x[k, 2, :16] = 255  # blue only in the top half: checks the plane layout and orientation
    return x.reshape(n, 3072), labels


def write_cifar(dest: Path, variant: str = "cifar10", *, n_train: int = 10, n_test: int = 6,
                archive: bool = True) -> dict:
    """The python-version pickles (protocol 2, bytes keys, as the Python 2 originals load)."""
    if variant == "cifar10":
        folder, names = "cifar-10-batches-py", [f"class{k}" for k in range(10)]
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file, lkey, nkey = "test_batch", "batches.meta", b"labels", b"label_names"
    else:
        folder, names = "cifar-100-python", [f"fine{k:02d}" for k in range(100)]
        train_files, test_file, meta_file, lkey, nkey = ["train"], "test", "meta", b"fine_labels", b"fine_label_names"
    files: dict[str, bytes] = {}
    train_x, train_y = [], []
    for k, f in enumerate(train_files):
        x, y = cifar_arrays(n_train, len(names), seed=k)
        train_x.append(x)
        train_y += y
        d = {b"batch_label": f.encode(), lkey: y, b"data": x, b"filenames": [b"f.png"] * len(y)}
        if variant == "cifar100":
            d[b"coarse_labels"] = [0] * len(y)
        files[f] = pickle.dumps(d, protocol=2)
    tx, ty = cifar_arrays(n_test, len(names), seed=99)
    files[test_file] = pickle.dumps({lkey: ty, b"data": tx}, protocol=2)
    files[meta_file] = pickle.dumps({nkey: [n.encode() for n in names]}, protocol=2)
    if archive:
        fname = "cifar-10-python.tar.gz" if variant == "cifar10" else "cifar-100-python.tar.gz"
        b = io.BytesIO()
        with tarfile.open(fileobj=b, mode="w:gz") as tf:
            for f, d in files.items():
                add(tf, f"{folder}/{f}", d)
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / fname
        path.write_bytes(b.getvalue())
    else:
        path = dest / folder
        path.mkdir(parents=True)
        for f, d in files.items():
            (path / f).write_bytes(d)
    return {"path": path, "names": names, "train": (np.concatenate(train_x), train_y), "test": (tx, ty)}


def idx_bytes(a: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[a.dtype]
    return bytes([0, 0, code, a.ndim]) + b"".join(struct.pack(">I", s) for s in a.shape) + a.tobytes()


def write_idx(dest: Path, *, n_train: int = 12, n_test: int = 5, gz: bool = True, size: int = 28) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(1, 256, (n, size, size), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            data = idx_bytes(arr)
            name = f"{split}-{kind}-ubyte"
            (dest / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
        out[split] = (x, y)
    return out
