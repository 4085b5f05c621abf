"""Files: atomic writes, and the lock that keeps two trainers out of one run directory.

Each writer writes to a temporary file in the same directory, flushes it to disk and renames it over
the target; rename is atomic on POSIX and Windows, so readers see the old file or the new, never a mix.
A process killed mid-write leaves its temporary behind; the next trainer to lock the directory
removes them (`remove_stale_temporaries`), and only them: a file is one of them only when its name says it
is a temporary of a file charrnn writes in that folder, by a process that is gone.

Files changed in place (the lock, the metrics log) are opened without following a symbolic link, and a
hard-linked or special file is refused: writing it would change a file somewhere else.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import socket
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from charrnn.errors import CharRNNError, WriteError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second trainer is not detected there
    fcntl = None

LOCK_FILE = ".lock"
_TEMPORARY_SUFFIX = ".tmp"
# Exactly what atomic_path names its temporaries (.NAME.PID.8-HEX.tmp), so a user's own .x.tmp is never
# taken for one of them (and deleted).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
# Where the OS has no O_NOFOLLOW (Windows), the lstat check in open_in_place stands alone.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_LOCK_KEYS = {"pid", "host", "purpose", "since"}


def _file_mode() -> int:
    # What open() would give a new file under this process's umask (0644 for the usual 022). Some
    # writers (safetensors) create their file with 0600; every file charrnn writes gets this mode.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TEMPORARY_SUFFIX}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        open(tmp, "xb").close()
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)  # the writer may have replaced the file we created
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteError(path, exc) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def open_regular(path: Path, flags: int) -> int:
    """A descriptor for `path`, opened without following a symbolic link, of a regular file only (a FIFO
    or a device is refused, never waited on): anything else is a CharRNNError naming it."""
    path = Path(path)
    if path.is_symlink():  # also where the OS has no O_NOFOLLOW
        raise _not_in_place(path, "a symbolic link")
    try:
        fd = os.open(path, flags | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link made since the check
            raise _not_in_place(path, "a symbolic link") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):  # a folder, or a FIFO nobody reads
            raise _not_in_place(path, "not a regular file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_in_place(path, "not a regular file")
    return fd


def open_in_place(path: Path, flags: int) -> int:
    """open_regular, for a file charrnn changes in place (the lock, metrics.jsonl): a file with other hard
    links is refused too, since changing it would change them."""
    fd = open_regular(path, flags)
    if os.fstat(fd).st_nlink > 1:
        os.close(fd)
        raise _not_in_place(path, "a file with other hard links")
    return fd


def _not_in_place(path: Path, what: str) -> CharRNNError:
    return CharRNNError(
        f"{path} is {what}; charrnn writes this file in place and never through a link or into another "
        f"file (that would change a file elsewhere): remove it ({path}) and try again"
    )


def append_text(path: Path, text: str) -> None:
    """Append to a log file (metrics.jsonl); a failure is a WriteError like the atomic writers'."""
    try:
        fd = open_in_place(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with open(fd, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise WriteError(path, exc) from None


def is_temporary(name: str) -> bool:
    """Whether a file name is one of atomic_path's temporaries."""
    return _TEMPORARY.match(name) is not None


def is_own_temporary(path: Path, names: set[str] | frozenset[str]) -> bool:
    """Whether `path` is a temporary that charrnn writes for one of `names` (the files it writes in that
    folder): a regular file, not a link, with such a name."""
    match = _TEMPORARY.match(Path(path).name)
    if match is None or match["name"] not in names:
        return False
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _writer_gone(pid: int) -> bool:
    """Whether the process that named a temporary can no longer be writing it."""
    if pid == os.getpid():
        return True  # the caller holds the folder's lock and is not writing in it now
    if os.name == "nt":
        return False  # os.kill(pid, 0) would terminate the process there
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or no such pid at all)
        return True
    except OSError:
        pass  # alive, another user's
    try:  # alive: a charrnn writer, or another program that got the pid of a killed one?
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False  # no /proc: keep it
    return bool(command) and b"charrnn" not in command  # empty while it starts: keep it


def remove_stale_temporaries(directory: Path, names: set[str] | frozenset[str]) -> int:
    """Delete the temporaries of `names` left by writers that are gone; call only while holding the
    directory's lock. Any other file named like a temporary is someone else's and stays."""
    removed = 0
    for entry in Path(directory).iterdir():
        if is_own_temporary(entry, names) and _writer_gone(int(_TEMPORARY.match(entry.name)["pid"])):
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def is_own_lock(path: Path) -> bool:
    """Whether `path` is a lock file charrnn wrote: a regular file with no other links, empty (its writer
    was killed before writing) or naming its holder."""
    try:
        fd = open_in_place(path, os.O_RDONLY)
    except (OSError, CharRNNError):
        return False
    with open(fd, "rb") as handle:
        return _holds_lock_record(handle.read(1 << 16))


def _holds_lock_record(data: bytes) -> bool:
    if not data.strip():
        return True
    try:
        record = json.loads(data)
    except ValueError:
        return False
    return isinstance(record, dict) and _LOCK_KEYS <= record.keys()


class DirectoryLock:
    """An OS file lock (flock) on DIRECTORY/.lock, held by one process at a time and released by the
    OS when the holder dies, so a kill -9 never leaves a directory locked. The file names its holder."""

    def __init__(self, directory: Path, purpose: str = "training"):
        self.directory, self.purpose = Path(directory), purpose
        self._handle = None

    def acquire(self) -> DirectoryLock:
        if self._handle is not None or fcntl is None:
            return self
        path = self.directory / LOCK_FILE
        handle = open(open_in_place(path, os.O_RDWR | os.O_CREAT), "rb+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise self._busy(path, exc) from None
        if not _holds_lock_record(handle.read(1 << 16)):
            handle.close()
            raise CharRNNError(
                f"{path} is not charrnn's lock file (it holds something else), and charrnn never overwrites "
                f"a file it did not write: move it away ({path}) and try again"
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        handle.seek(0)
        handle.truncate()
        handle.write((json.dumps(holder) + "\n").encode("utf-8"))
        handle.flush()
        self._handle = handle
        return self

    def _busy(self, path: Path, exc: OSError) -> CharRNNError:
        """Why flock failed: another holder (named from the file), or a file system without locks."""
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return CharRNNError(
                f"cannot lock {path} ({exc.strerror}); this file system may not support locks "
                "(e.g. NFS without lockd): use a local folder for the run"
            )
        try:
            with open(open_in_place(path, os.O_RDONLY), "rb") as handle:
                info = json.loads(handle.read(1 << 16))
            who = f"pid {info['pid']} on {info['host']}, {info['purpose']} since {info['since']}"
        except (OSError, CharRNNError, ValueError, KeyError, TypeError):
            who = "another process"
        return CharRNNError(
            f"{self.directory} is in use by another charrnn ({who}); wait for it to finish "
            "or stop it first (Ctrl-C), then try again"
        )

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None


def cache_dir() -> Path:
    """Where downloads, prepared corpora and built kernels are kept: $CHARRNN_CACHE_DIR, else $XDG_CACHE_HOME/charrnn or ~/.cache/charrnn."""
    if os.environ.get("CHARRNN_CACHE_DIR"):
        return Path(os.environ["CHARRNN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charrnn"
