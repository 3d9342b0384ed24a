"""Writing files safely: the one atomic writer, the one exclusive lock, and the one-line wording of
an operating-system error (a full disk, a read-only place).

* :func:`atomic_write` writes into a temporary file beside the target, fsyncs it and renames it
  over the target, so a crash or a full disk at any moment leaves either the old file or the new
  one, never a torn one. Every file a run folder or a dataset holds that is written whole
  (config, summaries, reports, statistics, checkpoints, weights) goes through it; the files get the
  permissions a plain ``open()`` would give (0666 minus the umask, usually 0644).
* :class:`ExclusiveLock` is an ``flock`` on a lock file, held by a writer of a run folder or a
  dataset for its whole life; a second writer is refused at once with one line naming the folder
  and the process that holds it. The kernel drops the lock when its holder dies, even by SIGKILL,
  so a stale lock file never blocks anyone.
* :func:`output_file` is where a command checks the one file it writes at the user's ``--out``:
  no command overwrites a file it did not write, nor writes into a folder another process holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from alexnet.errors import UserError

TMP_SUFFIX = ".tmp"
# Errors that say "this place cannot take the write": reported in one line, never a traceback.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Recorder:
    """A file wrapper that remembers the OSError a write raised: torch.save re-raises a failed
    write (a full disk) as a RuntimeError, and the errno is what the user needs to read."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], object]) -> None:
    """``write(f)`` (``f`` a binary file) into a temporary file beside ``path``, fsync, rename over
    ``path``. A failure leaves any previous file at ``path`` untouched, removes the temporary file
    and raises the OSError (with its errno and ``filename`` = ``path``) even where the writing
    library wrapped it in another exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    rec: _Recorder | None = None
    try:
        with os.fdopen(fd, "wb") as f:
            rec = _Recorder(f)
            write(rec)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would (0666 & ~umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        cause = e if isinstance(e, OSError) else (rec.error if rec is not None else None)
        if cause is not None and not isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def remove_temporaries(folder: str | os.PathLike[str], name_glob: str = "*") -> None:
    """Temporary files of :func:`atomic_write` that a killed process left in ``folder``."""
    d = Path(folder)
    for p in d.glob(f".{name_glob}.*{TMP_SUFFIX}") if d.is_dir() else []:
        p.unlink(missing_ok=True)


def os_error_line(e: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """One line for an OSError: the file and the reason."""
    where = e.filename if e.filename is not None else path
    why = e.strerror or str(e) or type(e).__name__
    return f"{where}: {why}" if where is not None else why


_HELD: set[str] = set()  # the lock files this process holds


class BusyError(UserError):
    """Another process holds the lock of a run folder or a dataset."""


class ExclusiveLock:
    """An exclusive ``flock`` on ``lock_path``, taken at once or refused with :class:`BusyError`;
    ``what`` names the guarded folder in the message. Held until :meth:`release` (or the
    process's end). The lock file holds the holder's pid, for the message, and is removed on
    release; a holder re-checks after locking that the path still names its file, so a release
    racing with a new writer never lets two hold it."""

    def __init__(self, lock_path: str | os.PathLike[str], what: str | os.PathLike[str]) -> None:
        self.path = Path(lock_path)
        self.what = str(what)
        self._fd: int | None = None
        self.acquire()

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise UserError(f"{self.what}: cannot be written ({os_error_line(e)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise UserError(f"{self.what}: cannot be locked ({os_error_line(e)})") from None
                try:
                    holder = os.read(fd, 32).decode(errors="replace").strip()
                finally:
                    os.close(fd)
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise BusyError(f"{self.what}: in use by another alexnet process{who}; wait for it to finish "
                                f"or choose another folder") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed between our open and our lock: take the new file
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            _HELD.add(os.path.abspath(self.path))
            return

    def release(self) -> None:
        if self._fd is None:
            return
        _HELD.discard(os.path.abspath(self.path))
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "ExclusiveLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike[str]) -> ExclusiveLock:
    """Create ``folder`` if needed and lock it (``folder/.lock``) for this process's writing."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{folder}: cannot be created ({os_error_line(e)})") from None
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    return ExclusiveLock(folder / ".lock", folder)


def check_writable(folder: str | os.PathLike[str], what: str | None = None) -> None:
    """Refuse at once, before any work, a place that cannot take a file: under a regular file, on a
    read-only filesystem, without permission. Creates ``folder`` if needed."""
    folder = Path(folder)
    label = what or str(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".alexnet-write-test.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"{label}: cannot be written ({os_error_line(e)})") from None


def nonempty_path(value: str | os.PathLike[str], flag: str) -> Path:
    """``value`` as a path; an empty string (which Path reads as the current folder) refused."""
    if not str(value).strip():
        raise UserError(f"{flag} {str(value)!r}: an empty path; give a file or folder name")
    return Path(value)


@contextmanager
def output_file(path: str | os.PathLike[str], *, force: bool = False, ours: Callable[[Path], bool] | None = None,
                flag: str = "--out") -> Iterator[Path]:
    """The place a command writes one file to, checked before any work and held while it writes.
    No command overwrites a file it did not write: an existing file is replaced only when ``ours``
    recognises it as an earlier output of the same command, or with ``force``. A folder that a
    live process holds (its ``.lock``, see :func:`lock_folder`) is never written into: its lock
    is taken for the write, or the command is refused. The file itself is written by the caller
    through :func:`atomic_write`."""
    p = nonempty_path(path, flag)
    if p.is_dir():
        raise UserError(f"{p}: is a folder; give the file to write")
    if (p.exists() or p.is_symlink()) and not force:
        try:
            mine = ours is not None and p.is_file() and ours(p)
        except (OSError, ValueError):
            mine = False
        if not mine:
            raise UserError(f"{p}: exists and was not written by this command; choose another {flag} "
                            f"(or pass --force to replace it)")
    check_writable(p.parent, f"{flag} {p}")
    guard = p.parent / ".lock"
    held_here = os.path.abspath(guard) in _HELD  # this command already holds the folder
    lock = ExclusiveLock(guard, p.parent) if guard.exists() and not held_here else None
    try:
        yield p
    finally:
        if lock is not None:
            lock.release()
