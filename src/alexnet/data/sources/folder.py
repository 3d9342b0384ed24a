"""Image-folder trees: ``train/<class>/*`` and ``val/<class>/*``, or one ``<class>/*`` tree split
by ``--val-fraction``; from a directory or straight from a tar archive (``.tar``, ``.tgz``: the
layout fast.ai's Imagenette and Imagewoof ship in), without unpacking it.

Classes are the sorted folder names (torchvision ImageFolder's convention). Every regular file
under a class folder is an item, so files that are not images are reported, not silently
dropped; hidden files (``.DS_Store``, macOS ``._*``) are metadata and ignored.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from alexnet.errors import UserError

from .base import Item, Source, file_stamp, is_hidden, list_tar, open_tar, oversized, tar_damage, unsafe_member_name

VAL_DIRS = ("val", "validation")


@dataclass
class Entry:
    rel: str  # posix path relative to the tree's top
    handle: Any  # a Path (directory tree) or a TarInfo (archive)
    order: int  # reading order: offset in an archive, listing order in a directory


Pairs = list[tuple[Entry, str]]  # (entry, its path below the split folder)
Lists = dict[str, list[tuple[Entry, int]]]  # split -> (entry, label), the source's items


class Tree:
    """A tree of files: a directory or a tar archive read in place."""

    path: Path
    entries: list[Entry]
    # (name, report code[, detail]) of files or archive members that are never read
    rejected: list[tuple[str, ...]]

    def read(self, entries: Sequence[Entry], names: Sequence[str], labels: Sequence[int]) -> Iterator[Item]:
        raise NotImplementedError

    def stamp(self) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class DirTree(Tree):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rejected = []
        top = path.resolve()
        files: list[tuple[str, Path, int, int]] = []  # (rel, path, size, mtime_ns)
        seen: set[tuple[int, int]] = set()  # (device, inode) of every folder walked: no loops

        def walk(d: Path, rel: str) -> None:
            st = d.stat()
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            try:
                children = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as e:
                self.rejected.append((rel or ".", "unreadable", e.strerror or str(e)))
                return
            for e in children:
                if e.name.startswith("."):
                    continue
                r = f"{rel}{e.name}"
                p = Path(e.path)
                if e.is_symlink():
                    # A link to a folder or file inside the tree would list those files twice
                    # (and a link from train/ into val/ would leak val into train); one to an
                    # ancestor would loop. Links to places outside the tree are followed.
                    try:
                        target = p.resolve(strict=True)
                    except (OSError, RuntimeError):  # dangling, or a loop of links
                        self.rejected.append((r, "unreadable", "a broken or looping link"))
                        continue
                    if target == top or top in target.parents:
                        self.rejected.append((r, "link_into_tree", f"points to {target.relative_to(top).as_posix() or '.'}"))
                        continue
                try:
                    if e.is_dir():
                        walk(p, r + "/")
                    elif e.is_file():
                        fst = e.stat()
                        files.append((r, p, fst.st_size, fst.st_mtime_ns))
                except OSError as err:
                    self.rejected.append((r, "unreadable", err.strerror or str(err)))

        walk(path, "")
        files.sort()
        self.entries = [Entry(rel, p, i) for i, (rel, p, _, _) in enumerate(files)]
        self._stats = [(size, mtime) for _, _, size, mtime in files]

    def read(self, entries: Sequence[Entry], names: Sequence[str], labels: Sequence[int]) -> Iterator[Item]:
        for e, name, label in zip(entries, names, labels):
            yield Item(name, label, str(e.handle))  # a worker reads the file: reading is parallel too

    def stamp(self) -> list[Any]:
        # Names, sizes and modification times: a file replaced, grown or touched between an
        # interrupted prepare and its rerun makes the rerun start clean instead of mixing data.
        h = hashlib.sha1()
        for e, (size, mtime) in zip(self.entries, self._stats):
            h.update(os.fsencode(e.rel) + f"\0{size}\0{mtime}\n".encode())
        return [str(self.path.resolve()), len(self.entries), h.hexdigest()]


class TarTree(Tree):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tf = open_tar(path)
        members = list_tar(self.tf, path)
        compressed = type(self.tf.fileobj).__module__ in ("gzip", "bz2", "lzma")
        damage = tar_damage(self.tf, members, None if compressed else path.stat().st_size)
        if damage:
            self.tf.close()
            raise UserError(f"{path}: damaged archive ({damage})")
        self.entries, self.rejected = [], []
        for m in members:
            if unsafe_member_name(m.name):
                self.rejected.append((m.name, "unsafe_path"))
            elif m.issym() or m.islnk() or m.isdev():
                self.rejected.append((m.name, "not_regular_file"))
            elif m.isfile():
                self.entries.append(Entry(PurePosixPath(m.name).as_posix(), m, m.offset_data))
        self.entries.sort(key=lambda e: e.rel)

    def read(self, entries: Sequence[Entry], names: Sequence[str], labels: Sequence[int]) -> Iterator[Item]:
        # Archive order: a compressed tar is read forwards only once per split.
        for e, name, label in sorted(zip(entries, names, labels), key=lambda t: t[0].order):
            try:
                f = self.tf.extractfile(e.handle)
                head = f.read(16) if f is not None else b""
                bad = oversized(head, e.handle.size)
                if bad is not None:
                    yield Item(name, label, None, skip=bad[0], detail=bad[1])
                    continue
                data = head + f.read() if f is not None else b""
            except (tarfile.TarError, OSError, EOFError) as err:
                yield Item(name, label, None, skip="corrupt_archive", detail=str(err))
                continue
            yield Item(name, label, data)

    def stamp(self) -> list[Any]:
        return file_stamp(self.path)

    def close(self) -> None:
        self.tf.close()


def open_tree(path: Path) -> Tree:
    return DirTree(path) if path.is_dir() else TarTree(path)


def _child_dirs(rels: Sequence[str], prefix: str) -> tuple[set[str], bool]:
    """Folder names directly under ``prefix`` and whether files sit there directly."""
    dirs, files = set(), False
    for r in rels:
        if r.startswith(prefix):
            rest = r[len(prefix):].split("/")
            if len(rest) == 1:
                files = True
            else:
                dirs.add(rest[0])
    return dirs, files


def find_root(rels: Sequence[str]) -> str:
    """Descend through lone wrapper folders (``imagenette2-320/``) to the tree's real top."""
    prefix = ""
    while True:
        dirs, files = _child_dirs(rels, prefix)
        if "train" in dirs or files or len(dirs) != 1:
            return prefix
        prefix += next(iter(dirs)) + "/"


def _classify(pairs: Pairs) -> tuple[dict[str, list[Entry]], list[Entry]]:
    """(entry, path below the split folder) pairs -> the entries per class folder (the path's
    first component) and those lying flat in the split folder."""
    per: dict[str, list[Entry]] = defaultdict(list)
    flat: list[Entry] = []
    for e, rest in pairs:
        cls, sep, _ = rest.partition("/")
        (per[cls].append(e) if sep else flat.append(e))
    return per, flat


def held_out(rels: Sequence[str], frac: float) -> set[str]:
    """The files of one class that --val-fraction holds out: round(frac × n) of them (at least one
    and never all, when the class has two or more), chosen by the sha1 of their path, so the
    split is the same on every machine and in every listing order."""
    n = len(rels)
    k = min(max(round(frac * n), 1), n - 1) if n >= 2 else 0
    return set(sorted(rels, key=lambda r: hashlib.sha1(os.fsencode(r)).hexdigest())[:k])


def check_val_fraction(frac: float) -> None:
    if not 0.0 < frac < 1.0:
        raise UserError(f"--val-fraction {frac}: must be between 0 and 1")


def held_out_by_class(classes: Iterable[Sequence[str]], frac: float) -> set[str]:
    """A stratified --val-fraction split: the names :func:`held_out` takes from each class's list
    (every class loses the same fraction); refused when it takes none at all."""
    lists = list(classes)
    val = set().union(*(held_out(names, frac) for names in lists))
    if not val:
        raise UserError(f"--val-fraction {frac}: leaves no validation images out of {sum(map(len, lists))}")
    return val


@dataclass
class FolderSource(Source):
    """``train/<class>/...`` (+ ``val/<class>/...``) or a single ``<class>/...`` tree."""

    tree: Tree | None = None
    val_fraction: float | None = None
    names: Mapping[str, str] | None = None
    # Hook for the extracted ImageNet tree: labels of val files lying flat in val/ (no class folders).
    flat_val_labels: Callable[[list[str]], dict[str, int]] | None = None
    # Hook: the full, ordered class list (e.g. the devkit's 1000 WNIDs) instead of the folders found.
    class_order: list[str] | None = None
    _lists: Lists = field(default_factory=dict)
    _rejected: list[Item] = field(default_factory=list)
    root: str = ""

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = "folder"
        if self.tree is None:
            self.tree = open_tree(self.path)
        self._layout()

    # -- layout ----------------------------------------------------------------------------
    def _layout(self) -> None:
        """Which file is in which split and class: the tree's top, its files by split, the classes,
        then the split lists (given by the folders or held out by --val-fraction)."""
        assert self.tree is not None
        entries = [e for e in self.tree.entries if not is_hidden(e.rel)]
        if not entries:
            raise UserError(f"{self.path}: no files found")
        if self.val_fraction is not None:
            check_val_fraction(self.val_fraction)
        self.root = find_root([e.rel for e in entries])
        top_dirs, _ = _child_dirs([e.rel for e in entries], self.root)
        has_train = "train" in top_dirs
        by_split = self._split_folders(entries, top_dirs) if has_train else self._one_tree(entries)
        train, train_flat = _classify(by_split["train"])
        index = self._take_classes(train, has_train)
        rejected = [(e, "unexpected", "not inside a class folder") for e in train_flat]
        if has_train and self.val_fraction is None:
            lists = self._given_split(train, by_split["val"], index, rejected)
        else:
            lists = self._held_out_split(train, index)
        if not lists["train"]:
            raise UserError(f"{self.path}: no training files")
        for k in lists:
            lists[k].sort(key=lambda t: t[0].order)
        self._lists = lists
        self._rejected = [Item(e.rel, -1, None, skip=code, detail=d) for e, code, d in rejected]
        self._rejected += [Item(name, -1, None, skip=r[1], detail=r[2] if len(r) > 2 else "")  # type: ignore[misc]
                           for name, r in ((r[0], r) for r in self.tree.rejected)]

    def _split_folders(self, entries: list[Entry], top_dirs: set[str]) -> dict[str, Pairs]:
        """``train/`` and ``val/`` (or ``validation/``) under the root: split -> (entry, path below
        the split folder); other files (READMEs, csv lists) are in neither split."""
        root = self.root
        val_dir = next((d for d in VAL_DIRS if d in top_dirs), None)
        if val_dir is not None and self.val_fraction is not None:
            raise UserError(f"{self.path}: has its own {root}{val_dir}/ folder; "
                            f"--val-fraction is for a tree without one")
        if val_dir is None and self.val_fraction is None:
            raise UserError(f"{self.path}: {root}train/ has no {root}val/ beside it; "
                            f"pass --val-fraction F to hold out part of it")
        by_split: dict[str, Pairs] = defaultdict(list)
        for e in entries:
            first, _, rest = e.rel[len(root):].partition("/")
            if first == "train":
                by_split["train"].append((e, rest))
            elif first == val_dir:
                by_split["val"].append((e, rest))
        return by_split

    def _one_tree(self, entries: list[Entry]) -> dict[str, Pairs]:
        """A single ``<class>/`` tree under the root: all of it is ``train``, split by --val-fraction."""
        if self.val_fraction is None:
            raise UserError(f"{self.path}: no train/ and val/ folders; "
                            f"for a single <class>/ tree pass --val-fraction F")
        by_split: dict[str, Pairs] = defaultdict(list)
        by_split["train"] = [(e, e.rel[len(self.root):]) for e in entries if e.rel.startswith(self.root)]
        return by_split

    def _take_classes(self, train: dict[str, list[Entry]], has_train: bool) -> dict[str, int]:
        """Set ``classes`` (the training class folders, sorted, or the ``class_order`` hook's list)
        and ``class_names``; returns class -> label."""
        if not train:
            where = f"{self.root}train/" if has_train else (self.root or "the top folder")
            raise UserError(f"{self.path}: no class folders with files under {where}")
        found = sorted(train)
        if self.class_order is not None:
            unknown = [c for c in found if c not in set(self.class_order)]
            if unknown:
                raise UserError(f"{self.path}: class folder {unknown[0]} is not one of the devkit's "
                                f"{len(self.class_order)} classes")
            self.classes = list(self.class_order)
        else:
            self.classes = found
        names = self.names or {}
        self.class_names = [names.get(c, c) for c in self.classes]
        return {c: i for i, c in enumerate(self.classes)}

    def _given_split(self, train: dict[str, list[Entry]], val_pairs: Pairs, index: dict[str, int],
                     rejected: list[tuple[Entry, str, str]]) -> Lists:
        """The lists of a tree with its own val/ folder: val's class folders must be training
        classes; files lying flat in val/ take their class from the ``flat_val_labels`` hook or are
        reported (appended to ``rejected``)."""
        root = self.root
        lists: Lists = {"train": [], "val": []}
        val, val_flat = _classify(val_pairs)
        bad = sorted(set(val) - set(self.classes))
        if bad:
            raise UserError(f"{self.path}: {root}val/{bad[0]}: class not in {root}train/")
        for c, es in val.items():
            lists["val"] += [(e, index[c]) for e in es]
        if val_flat:
            labels = self.flat_val_labels([e.rel for e in val_flat]) if self.flat_val_labels else {}
            if not labels and not val:
                raise UserError(f"{self.path}: {root}val/ holds files but no class folders, and no ground truth "
                                f"(an ILSVRC2012 devkit beside the tree) gives their classes")
            for e in val_flat:
                if e.rel in labels:
                    lists["val"].append((e, labels[e.rel]))
                else:
                    rejected.append((e, "unexpected", "not inside a class folder"))
        for c, es in train.items():
            lists["train"] += [(e, index[c]) for e in es]
        return lists

    def _held_out_split(self, train: dict[str, list[Entry]], index: dict[str, int]) -> Lists:
        """A stratified split (every class loses the same fraction), stable per file (:func:`held_out`)."""
        val_set = held_out_by_class(([e.rel for e in es] for es in train.values()), float(self.val_fraction or 0.0))
        lists: Lists = {"train": [], "val": []}
        for c, es in train.items():
            for e in es:
                lists["val" if e.rel in val_set else "train"].append((e, index[c]))
        return lists

    # -- Source API ------------------------------------------------------------------------
    def count(self, split: str) -> int | None:
        return len(self._lists[split]) + (len(self._rejected) if split == "train" else 0)

    def items(self, split: str, after: Any = None) -> Iterator[tuple[Any, Item]]:
        assert self.tree is not None
        start = -1 if after is None else int(after)
        pos = 0
        if split == "train":
            # Files that are never read (unsafe archive names, stray files) are reported once,
            # with the training split.
            for it in self._rejected:
                if pos > start:
                    yield pos, it
                pos += 1
        todo = self._lists[split][max(0, start + 1 - pos):]
        pos = max(pos, start + 1)
        names = [self._display(e) for e, _ in todo]
        for it in self.tree.read([e for e, _ in todo], names, [lab for _, lab in todo]):
            yield pos, it
            pos += 1

    def _display(self, e: Entry) -> str:
        return e.rel if isinstance(self.tree, DirTree) else f"{self.path.name}/{e.rel}"

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"layout": "train/val folders" if self.val_fraction is None else "one tree split by val_fraction",
                  "root": self.root})
        if self.val_fraction is not None:
            d["val_fraction"] = self.val_fraction
        return d

    def fingerprint(self) -> dict[str, Any]:
        assert self.tree is not None
        return {"kind": self.kind, "tree": self.tree.stamp(), "val_fraction": self.val_fraction}

    def close(self) -> None:
        if self.tree is not None:
            self.tree.close()
