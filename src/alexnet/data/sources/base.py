"""What every importer gives ``prepare``: classes, and per split an ordered stream of items.

A source is opened (and fully validated) before any work starts, so a bad archive, a missing
devkit or a mismatched ground truth fails in seconds with nothing written. Its
streams are resumable: every item comes with a *cursor* (JSON-able) and ``items(split, after=c)``
continues right after the item whose cursor was ``c``, skipping what it can without reading it.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from alexnet.errors import UserError

WNID_RE = re.compile(r"^n\d{8}$")

# Report codes (prepare_report.json "codes"): what was converted ...
CONVERTED = {
    "cmyk": "CMYK converted to RGB",
    "grayscale": "grayscale converted to RGB",
    "palette": "palette image converted to RGB",
    "alpha": "alpha channel composited onto white",
    "format_mismatch": "file content does not match its extension",
    "mode": "converted to 8-bit RGB",
}
# ... and why a file was skipped.
SKIPPED = {
    "zero_byte": "zero-byte file",
    "truncated": "truncated or corrupt image data",
    "not_image": "not an image",
    "decompression_bomb": "larger than Pillow's decompression-bomb limit",
    "unsafe_path": "archive member with an absolute path or '..'",
    "not_regular_file": "archive member that is not a regular file",
    "unreadable": "could not be read",
    "corrupt_archive": "unreadable archive data",
    "unexpected": "unexpected file in the archive",
    "too_large": "larger than any image this tool reads (over 1 GiB)",
    "link_into_tree": "symbolic link into the tree itself (a loop, or a second copy of its files)",
}

# The first bytes of the image formats a dataset holds (JPEG, PNG, GIF, BMP, TIFF, WebP).
IMAGE_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")
SNIFF_BYTES = 16 << 20  # a file larger than this is read only if it starts like an image
MAX_IMAGE_BYTES = 1 << 30  # and none larger than this is read at all


def oversized(head: bytes, size: int) -> tuple[str, str] | None:
    """(skip code, detail) for a file too large to read whole, judged from its size and its first
    bytes ``head`` before reading the rest (a stray video or disk image in a class folder), or
    None when it may be read."""
    if size > SNIFF_BYTES and not head.startswith(IMAGE_MAGIC):
        return "not_image", f"{size:,} bytes without an image format's signature; not read"
    if size > MAX_IMAGE_BYTES:
        return "too_large", f"{size:,} bytes; not read"
    return None


@dataclass
class Item:
    """One image of a source, as :meth:`Source.items` yields it.

    Attributes:
        name: The file's name inside the source (shown in ``prepare_report.json``).
        label: The class index, into :attr:`Source.classes`.
        data: The encoded bytes, a path for a worker to read, or a decoded uint8 H×W or H×W×3 array.
        skip: A SKIPPED code when the item is already known to be unusable (it is then reported, not
            prepared).
        detail: The reason that goes with ``skip``.
    """

    name: str
    label: int
    data: bytes | str | np.ndarray | None
    skip: str | None = None
    detail: str = ""


@dataclass
class Source:
    """The interface of a data source: what every importer gives ``prepare``.

    A subclass opens and validates its input in its constructor (so bad input fails before any work),
    fills the fields and implements :meth:`items`; :func:`alexnet.data.sources.detect.open_source`
    picks the source for a path.

    Attributes:
        path: The file or folder the source reads.
        kind: Its name in ``meta.json`` (``imagenet``, ``folder``, ``cifar``, ``idx``, ``synthetic``).
        classes: Class identifiers in label order (ImageNet: the WNIDs, sorted).
        class_names: Readable names, in the same order.
        split_names: The splits it provides.
        native_size: The (H, W) that small-image datasets keep unless ``--size`` is given.
    """

    path: Path
    kind: str = ""
    classes: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    split_names: tuple[str, ...] = ("train", "val")
    # Small-image datasets (CIFAR, MNIST) keep this size (H, W) unless --size is given.
    native_size: tuple[int, int] | None = None

    def count(self, split: str) -> int | None:
        """Number of items ``items(split)`` yields, or None where only reading all would tell."""
        return None

    def estimate(self, split: str) -> int | None:
        """A cheap estimate of the count for the progress bar when :meth:`count` is None."""
        return None

    def items(self, split: str, after: Any = None) -> Iterator[tuple[Any, Item]]:
        """The items of ``split`` in a fixed order, each with its cursor.

        Args:
            split: One of :attr:`split_names`.
            after: A cursor an earlier call yielded: continue right after that item (a resumed
                ``prepare``), skipping what can be skipped without reading it.

        Yields:
            ``(cursor, item)``: a JSON-able cursor and the :class:`Item`.
        """
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What meta.json records under "source"."""
        return {"kind": self.kind, "path": str(self.path)}

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this exact input, so that a resumed prepare continues only the same one."""
        return {"kind": self.kind, "path": str(Path(self.path).resolve())}

    def close(self) -> None:
        pass


def file_stamp(path: Path) -> list[Any]:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def unsafe_member_name(name: str) -> bool:
    """An archive member name that would land outside the folder it was extracted into: absolute
    (``/x``, ``C:\\x``) or climbing with ``..``. We never extract, but such members are not
    trusted as data either."""
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        return True
    return ".." in PurePosixPath(n).parts


def archive_error(e: BaseException) -> str:
    """A tarfile error in one line. ``tarfile.open(mode="r:*")`` lists every compression it tried,
    one line each; the one that matters is the method that recognised the file (its data is
    damaged), not the others that merely did not."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(e).__name__
    methods = [s.lstrip("- ") for s in lines[1:] if s.startswith("- method")]
    telling = [m for m in methods if not re.search(r"not an? \w+ file|invalid header|empty file", m)]
    return (telling or methods or lines)[0][:300]


def open_tar(path: Path, what: str = "archive") -> tarfile.TarFile:
    """Open a (possibly compressed) tar or raise a one-line UserError."""
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{path}: unreadable {what} ({archive_error(e)})") from None


def list_tar(tf: tarfile.TarFile, path: Path, what: str = "archive") -> list[tarfile.TarInfo]:
    """All member headers (reads the whole header chain: a truncated tar fails here, up front)."""
    try:
        return tf.getmembers()
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise UserError(f"{path}: unreadable {what} ({archive_error(e)})") from None


def is_hidden(rel: str) -> bool:
    """Dot files and folders (.DS_Store, macOS ``._x`` resource forks, .ipynb_checkpoints) are
    metadata by convention, not data."""
    return any(part.startswith(".") for part in PurePosixPath(rel.replace(os.sep, "/")).parts)


def tar_damage(tf: tarfile.TarFile, members: list[tarfile.TarInfo], size: int | None) -> str | None:
    """Why a tar is damaged past its readable members, or None when it is whole.

    tarfile ends its member list quietly at the first bad header after the first one, and a
    member cut short only fails when read; so: no member may run past the archive's ``size``
    and nothing but zero padding may follow the last header read."""
    if size is not None:
        for m in members:
            if m.offset_data + m.size > size:
                return f"member {m.name} is cut short (the archive ends at byte {size})"
    f = tf.fileobj
    if f is None:
        return None
    try:
        f.seek(tf.offset)
        while True:
            block = f.read(1 << 20)
            if not block:
                return None
            if block.count(0) != len(block):
                after = f" after member {members[-1].name}" if members else ""
                return f"unreadable data{after} at byte {tf.offset}"
    except (OSError, EOFError, tarfile.TarError) as e:
        return str(e)
