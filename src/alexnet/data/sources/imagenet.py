"""ILSVRC-2012 (§2): the official archives, read in place, and the extracted tree.

The official files, in one folder:

* ``ILSVRC2012_img_train.tar`` — a tar of 1000 per-class tars ``<WNID>.tar`` (1,281,167 JPEGs);
* ``ILSVRC2012_img_val.tar`` — 50,000 JPEGs ``ILSVRC2012_val_%08d.JPEG`` side by side;
* ``ILSVRC2012_devkit_t12.tar.gz`` — ``data/meta.mat`` (the ``synsets`` struct: ILSVRC2012_ID,
  WNID, words, num_children, ...) and ``data/ILSVRC2012_validation_ground_truth.txt`` (one
  ILSVRC2012_ID per validation image, in file-number order).

Members are read straight from the tar streams: 1.28M files are never unpacked to disk.

Two class orders exist and mixing them up is the classic bug. We index classes by the position
of the WNID in sorted order (torchvision's convention; ``n01440764`` tench is 0), while the
ground truth speaks in ILSVRC2012_IDs, the devkit's own order (ID 1 is ``n02119789`` kit fox). A
validation label is therefore ID -> WNID (through meta.mat's leaf synsets, ``num_children == 0``;
the other 860 synsets are inner WordNet nodes) -> sorted position.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping

import numpy as np

from alexnet.errors import UserError

from .base import WNID_RE, Item, Source, file_stamp, list_tar, open_tar, tar_damage, unsafe_member_name
from .folder import FolderSource

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
META = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
VAL_NAME_RE = re.compile(r"^ILSVRC2012_val_(\d+)\.[A-Za-z]+$")
# Class-name lists other distributions ship: "<WNID> <words>" per line.
NAME_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")


def is_official_folder(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in (TRAIN_TAR, VAL_TAR, DEVKIT_TAR))


# ---------------------------------------------------------------------------------------------
# The devkit


@dataclass
class Devkit:
    """The devkit's 1000 leaf synsets and the validation ground truth."""

    where: str
    leaves: list[tuple[int, str, str]]  # (ILSVRC2012_ID, WNID, words), in the devkit's ID order
    ground_truth: list[int]  # ILSVRC2012_ID of validation image 1, 2, ...

    @property
    def classes(self) -> list[str]:
        return sorted(w for _, w, _ in self.leaves)

    @property
    def names(self) -> dict[str, str]:
        return {w: words for _, w, words in self.leaves}

    def val_labels(self) -> list[int]:
        """Class index (sorted-WNID position) of validation image 1, 2, ...: ID -> WNID -> index."""
        wnid_of = {i: w for i, w, _ in self.leaves}
        index = {w: k for k, w in enumerate(self.classes)}
        return [index[wnid_of[i]] for i in self.ground_truth]


def _scalar(v: Any) -> Any:
    """Unwrap MATLAB's 1×1 arrays (loadmat nests every struct field in one)."""
    while isinstance(v, np.ndarray):
        if v.size == 0:
            return ""
        if v.size != 1:
            raise ValueError(f"expected a scalar, got an array of shape {v.shape}")
        v = v.reshape(-1)[0]
    return v


def parse_meta(data: bytes, where: str) -> list[tuple[int, str, str]]:
    """Leaf synsets (num_children == 0) of a devkit ``meta.mat``: (ILSVRC2012_ID, WNID, words)."""
    try:
        import scipy.io
    except ImportError:  # pragma: no cover - scipy is a dependency
        raise UserError(f"{where}: reading meta.mat needs scipy (pip install scipy)") from None
    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)
    except Exception as e:  # scipy raises many types on bad input
        raise UserError(f"{where}: unreadable meta.mat ({e})") from None
    synsets = mat.get("synsets")
    if synsets is None or not isinstance(synsets, np.ndarray) or synsets.dtype.names is None:
        raise UserError(f"{where}: meta.mat has no 'synsets' struct array")
    missing = {"ILSVRC2012_ID", "WNID", "words", "num_children"} - set(synsets.dtype.names)
    if missing:
        raise UserError(f"{where}: meta.mat synsets lack the field(s) {', '.join(sorted(missing))}")
    leaves = []
    try:
        for rec in np.atleast_1d(synsets).ravel():
            if int(_scalar(rec["num_children"])) != 0:
                continue  # an inner WordNet node, not one of the 1000 classes
            leaves.append((int(_scalar(rec["ILSVRC2012_ID"])), str(_scalar(rec["WNID"])).strip(),
                           str(_scalar(rec["words"])).strip()))
    except (ValueError, TypeError) as e:
        raise UserError(f"{where}: malformed meta.mat synsets ({e})") from None
    if not leaves:
        raise UserError(f"{where}: meta.mat has no leaf synsets (num_children == 0)")
    ids, wnids = [i for i, _, _ in leaves], [w for _, w, _ in leaves]
    if len(set(ids)) != len(ids) or len(set(wnids)) != len(wnids):
        raise UserError(f"{where}: meta.mat leaf synsets repeat an ILSVRC2012_ID or a WNID")
    bad = next((w for w in wnids if not WNID_RE.match(w)), None)
    if bad is not None:
        raise UserError(f"{where}: meta.mat WNID {bad!r} is not of the form n########")
    return sorted(leaves)


def parse_ground_truth(text: str, where: str, leaf_ids: set[int]) -> list[int]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            v = int(line)
        except ValueError:
            raise UserError(f"{where}: line {n}: {line[:40]!r} is not an ILSVRC2012_ID") from None
        if v not in leaf_ids:
            raise UserError(f"{where}: line {n}: ILSVRC2012_ID {v} is not one of meta.mat's leaf synsets")
        out.append(v)
    if not out:
        raise UserError(f"{where}: empty validation ground truth")
    return out


def read_devkit(path: Path) -> Devkit:
    """From ``ILSVRC2012_devkit_t12.tar.gz`` (read in place) or its extracted folder."""
    meta_bytes = gt_text = None
    if path.is_dir():
        m, g = path / META, path / GROUND_TRUTH
        if not m.is_file() or not g.is_file():
            raise UserError(f"{path}: devkit folder without {META if not m.is_file() else GROUND_TRUTH}")
        meta_bytes, gt_text = m.read_bytes(), g.read_text(errors="replace")
    else:
        with open_tar(path, "devkit archive") as tf:
            for m in list_tar(tf, path, "devkit archive"):
                name = PurePosixPath(m.name).as_posix()
                if not m.isfile() or unsafe_member_name(m.name):
                    continue
                try:
                    if name == META or name.endswith("/" + META):
                        meta_bytes = tf.extractfile(m).read()  # type: ignore[union-attr]
                    elif name == GROUND_TRUTH or name.endswith("/" + GROUND_TRUTH):
                        gt_text = tf.extractfile(m).read().decode(errors="replace")  # type: ignore[union-attr]
                except (tarfile.TarError, OSError, EOFError) as e:
                    raise UserError(f"{path}: unreadable devkit archive ({e})") from None
        if meta_bytes is None or gt_text is None:
            raise UserError(f"{path}: devkit archive has no {META if meta_bytes is None else GROUND_TRUTH}")
    leaves = parse_meta(meta_bytes, f"{path}:{META}")
    gt = parse_ground_truth(gt_text, f"{path}:{GROUND_TRUTH}", {i for i, _, _ in leaves})
    return Devkit(str(path), leaves, gt)


def find_devkit(*folders: Path) -> Path | None:
    for f in folders:
        for cand in (f / DEVKIT_TAR, f / DEVKIT_DIR):
            if cand.exists():
                return cand
    return None


def read_name_file(*folders: Path) -> dict[str, str]:
    """WNID -> words from a LOC_synset_mapping.txt / synset_words.txt, if one is there."""
    for f in folders:
        for n in NAME_FILES:
            p = f / n
            if p.is_file():
                out = {}
                for line in p.read_text(errors="replace").splitlines():
                    wnid, _, words = line.strip().partition(" ")
                    if WNID_RE.match(wnid):
                        out[wnid] = words.strip()
                return out
    return {}


def torchvision_names(classes: list[str]) -> dict[str, str]:
    """torchvision's 1000 ImageNet category names, listed in sorted-WNID order: usable for a tree
    holding exactly the 1000 ILSVRC-2012 classes."""
    try:
        from torchvision.models._meta import _IMAGENET_CATEGORIES
    except ImportError:  # pragma: no cover
        return {}
    if len(classes) != len(_IMAGENET_CATEGORIES):
        return {}
    return dict(zip(classes, _IMAGENET_CATEGORIES))


def val_number(name: str) -> int | None:
    m = VAL_NAME_RE.match(PurePosixPath(name).name)
    return int(m.group(1)) if m else None


def assign_val_labels(names: list[str], devkit: Devkit, where: str) -> tuple[dict[str, int], list[str]]:
    """Label of each validation file (in file-number order), and the files that are not
    validation images.

    Files named ``ILSVRC2012_val_N.*`` take line N of the ground truth; when no file is named so,
    they take the lines in sorted-name order. Their number must equal the ground truth's length.
    """
    numbered = {n: val_number(n) for n in names}
    if any(v is not None for v in numbered.values()):
        images = [n for n in names if numbered[n] is not None]
        others = [n for n in names if numbered[n] is None]
        order = {n: numbered[n] for n in images}
    else:
        images, others = sorted(names), []
        order = {n: k + 1 for k, n in enumerate(images)}
    gt = devkit.ground_truth
    if len(images) != len(gt):
        raise UserError(f"{where}: {len(images)} validation images but the ground truth "
                        f"({devkit.where}) has {len(gt)} lines")
    nums = sorted(order.values())
    if nums != list(range(1, len(gt) + 1)):
        dup = next((a for a, b in zip(nums, nums[1:]) if a == b), None)
        raise UserError(f"{where}: validation images are not numbered 1..{len(gt)}"
                        + (f" (number {dup} repeats)" if dup is not None else ""))
    labels = devkit.val_labels()
    return {n: labels[order[n] - 1] for n in sorted(images, key=order.__getitem__)}, others


# ---------------------------------------------------------------------------------------------
# The official archives


@dataclass
class ImageNetSource(Source):
    """The three official ILSVRC-2012 files in one folder."""

    devkit: Devkit | None = None
    _train_tf: tarfile.TarFile | None = None
    _outer: list[tuple[tarfile.TarInfo, str | None, int]] = field(default_factory=list)  # (member, skip code, label)
    _val_tf: tarfile.TarFile | None = None
    _val: list[tuple[tarfile.TarInfo, str | None, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kind = "imagenet"
        folder = self.path
        missing = [n for n in (TRAIN_TAR, VAL_TAR) if not (folder / n).is_file()]
        devkit_path = find_devkit(folder)
        if devkit_path is None:
            missing.append(DEVKIT_TAR)
        if missing:
            raise UserError(f"{folder}: missing {', '.join(missing)} (ILSVRC-2012 needs the train and val "
                            f"image archives and the devkit side by side)")
        try:
            # Everything is checked before any image is decoded: a bad devkit, archive or ground
            # truth fails now, with nothing written.
            self.devkit = read_devkit(devkit_path)  # type: ignore[arg-type]
            self.classes = self.devkit.classes
            names = self.devkit.names
            self.class_names = [names[w] for w in self.classes]
            self._open_train()
            self._open_val()
        except BaseException:
            self.close()
            raise

    def _open_train(self) -> None:
        path = self.path / TRAIN_TAR
        self._train_tf = tf = open_tar(path, "training archive")
        index = {w: i for i, w in enumerate(self.classes)}
        members = list_tar(tf, path, "training archive")
        damage = tar_damage(tf, members, path.stat().st_size)
        if damage:
            raise UserError(f"{path}: damaged archive ({damage})")
        found = 0
        # Canonical order, whatever the packing: class tars by WNID (then members by name).
        for m in sorted(members, key=lambda m: m.name):
            if m.isdir():
                continue
            base = PurePosixPath(m.name).name
            if unsafe_member_name(m.name):
                self._outer.append((m, "unsafe_path", -1))
            elif not m.isfile():
                self._outer.append((m, "not_regular_file", -1))
            elif not base.endswith(".tar"):
                self._outer.append((m, "unexpected", -1))
            else:
                wnid = base[: -len(".tar")]
                if wnid not in index:
                    raise UserError(f"{path}: member {m.name}: {wnid} is not one of the devkit's {len(index)} classes")
                try:
                    # Peek at the first header of every class tar: a corrupt one fails now.
                    with tarfile.open(fileobj=tf.extractfile(m), mode="r:") as inner:
                        inner.next()
                except (tarfile.TarError, OSError, EOFError) as e:
                    raise UserError(f"{path}: member {m.name} is not a readable tar ({e})") from None
                self._outer.append((m, None, index[wnid]))
                found += 1
        if not found:
            raise UserError(f"{path}: no per-class <WNID>.tar members")

    def _open_val(self) -> None:
        path = self.path / VAL_TAR
        self._val_tf = tf = open_tar(path, "validation archive")
        listed = list_tar(tf, path, "validation archive")
        damage = tar_damage(tf, listed, path.stat().st_size)
        if damage:
            raise UserError(f"{path}: damaged archive ({damage})")
        members = [m for m in listed if not m.isdir()]
        ok = [m for m in members if m.isfile() and not unsafe_member_name(m.name)]
        assert self.devkit is not None
        labels, others = assign_val_labels([m.name for m in ok], self.devkit, str(path))
        for m in members:  # what is not a validation image is reported first
            if unsafe_member_name(m.name):
                self._val.append((m, "unsafe_path", -1))
            elif not m.isfile():
                self._val.append((m, "not_regular_file", -1))
            elif m.name in others:
                self._val.append((m, "unexpected", -1))
        by_name = {m.name: m for m in ok}
        # Then the images in file-number order: validation record k is ILSVRC2012_val_{k+1}.
        self._val += [(by_name[n], None, lab) for n, lab in labels.items()]

    # -- Source API ------------------------------------------------------------------------
    def count(self, split: str) -> int | None:
        return len(self._val) if split == "val" else None

    def estimate(self, split: str) -> int | None:
        """Training images ≈ class-tar bytes / bytes per image of the first class tar."""
        tars = [m for m, skip, _ in self._outer if skip is None]
        if split != "train" or not tars or self._train_tf is None:
            return None
        with tarfile.open(fileobj=self._train_tf.extractfile(tars[0]), mode="r:") as inner:
            n = sum(1 for m in inner if m.isfile())
        return max(1, round(n * sum(m.size for m in tars) / max(tars[0].size, 1)))

    def items(self, split: str, after: Any = None) -> Iterator[tuple[Any, Item]]:
        return self._train_items(after) if split == "train" else self._val_items(after)

    def _val_items(self, after: Any) -> Iterator[tuple[Any, Item]]:
        assert self._val_tf is not None
        start = -1 if after is None else int(after)
        for k, (m, skip, label) in enumerate(self._val):
            if k <= start:
                continue
            name = f"{VAL_TAR}/{m.name}"
            if skip is not None:
                yield k, Item(name, -1, None, skip=skip)
                continue
            try:
                data = self._val_tf.extractfile(m).read()  # type: ignore[union-attr]
            except (tarfile.TarError, OSError, EOFError) as e:
                yield k, Item(name, label, None, skip="corrupt_archive", detail=str(e))
                continue
            yield k, Item(name, label, data)

    def _train_items(self, after: Any) -> Iterator[tuple[Any, Item]]:
        """Cursor (i, j): member j (by name) of class tar i (by name); (i, -1) a top-level member
        never opened."""
        tf = self._train_tf
        assert tf is not None
        start = (-1, -1) if after is None else (int(after[0]), int(after[1]))
        for i, (m, skip, label) in enumerate(self._outer):
            if i < start[0]:
                continue  # done in the interrupted run: not even opened
            outer_name = f"{TRAIN_TAR}/{m.name}"
            if skip is not None:
                if (i, -1) > start:
                    yield [i, -1], Item(outer_name, -1, None, skip=skip)
                continue
            try:
                inner = tarfile.open(fileobj=tf.extractfile(m), mode="r:")
            except (tarfile.TarError, OSError, EOFError) as e:
                if (i, 0) > start:
                    yield [i, 0], Item(outer_name, -1, None, skip="corrupt_archive", detail=str(e))
                continue
            with inner:
                try:
                    listed = inner.getmembers()  # headers only: seeks over the data
                    damage = tar_damage(inner, listed, m.size)
                except (tarfile.TarError, OSError, EOFError) as e:
                    listed, damage = list(inner.members), str(e)
                # Members by name: the order does not depend on how the archive was packed.
                files = sorted((x for x in listed if not x.isdir()), key=lambda x: x.name)
                for j, im in enumerate(files):
                    if (i, j) <= start:
                        continue  # done in the interrupted run
                    name = f"{outer_name}/{im.name}"
                    if unsafe_member_name(im.name):
                        yield [i, j], Item(name, label, None, skip="unsafe_path")
                    elif not im.isfile():
                        yield [i, j], Item(name, label, None, skip="not_regular_file")
                    else:
                        try:
                            data = inner.extractfile(im).read()  # type: ignore[union-attr]
                        except (tarfile.TarError, OSError, EOFError) as e:
                            yield [i, j], Item(name, label, None, skip="corrupt_archive", detail=str(e))
                            continue
                        yield [i, j], Item(name, label, data)
                if damage and (i, len(files)) > start:
                    # A class tar broken part-way: what follows the damage is lost, the run goes on.
                    yield [i, len(files)], Item(f"{outer_name} (after {len(files)} members)", label, None,
                                                skip="corrupt_archive", detail=damage)

    def describe(self) -> dict[str, Any]:
        assert self.devkit is not None
        return {"kind": self.kind, "path": str(self.path), "train": TRAIN_TAR, "val": VAL_TAR,
                "devkit": Path(self.devkit.where).name,
                "class_order": "sorted WNID; validation labels mapped ILSVRC2012_ID -> WNID through meta.mat"}

    def fingerprint(self) -> dict[str, Any]:
        assert self.devkit is not None
        dk = Path(self.devkit.where)
        return {"kind": self.kind, "path": str(self.path.resolve()),
                "files": [file_stamp(self.path / TRAIN_TAR), file_stamp(self.path / VAL_TAR),
                          file_stamp(dk) if dk.is_file() else str(dk)]}

    def close(self) -> None:
        for tf in (self._train_tf, self._val_tf):
            if tf is not None:
                tf.close()


# ---------------------------------------------------------------------------------------------
# The extracted tree


def is_imagenet_tree(path: Path) -> bool:
    """An extracted ILSVRC layout: ``train/<WNID>/``."""
    t = path / "train"
    if not t.is_dir():
        return False
    dirs = [d.name for d in t.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return bool(dirs) and all(WNID_RE.match(d) for d in dirs)


def open_imagenet_tree(path: Path, names: Mapping[str, str] | None = None,
                       val_fraction: float | None = None) -> FolderSource:
    """``train/<WNID>/*.JPEG`` with ``val/<WNID>/*`` or a flat ``val/`` labelled by the devkit
    (found beside the tree or in its parent folder). With a devkit the classes are its 1000
    sorted WNIDs and the names its words; otherwise the folders, named by a
    LOC_synset_mapping.txt / synset_words.txt if present."""
    devkit_path = find_devkit(path, path.parent)
    devkit = read_devkit(devkit_path) if devkit_path is not None else None
    all_names: dict[str, str] = {}
    if devkit is not None:
        all_names = devkit.names
    else:
        all_names = read_name_file(path, path.parent)

    def flat_val_labels(rels: list[str]) -> dict[str, int]:
        if devkit is None:
            return {}  # FolderSource refuses a flat val/ that nothing labels
        labels, _ = assign_val_labels(rels, devkit, f"{path}/val")
        return labels

    src = FolderSource(path, kind="imagenet-tree", val_fraction=val_fraction,
                       class_order=devkit.classes if devkit is not None else None,
                       flat_val_labels=flat_val_labels, names={**all_names, **(names or {})})
    if not all_names and not names:
        tv = torchvision_names(src.classes)
        src.class_names = [tv.get(c, c) for c in src.classes]
    return src
