"""Files: atomic writes, and the lock that keeps two trainers out of one run directory.

Each writer writes to a temporary file in the same directory, flushes it to disk and renames it over
the target; rename is atomic on POSIX and Windows, so readers see the old file or the new, never a mix.
A process killed mid-write leaves its temporary behind; the next trainer to lock the directory
removes them (`remove_stale_temporaries`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import socket
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
_TEMPORARY = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


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


def append_text(path: Path, text: str) -> None:
    """Append to a log file (metrics.jsonl); a failure is a WriteError like the atomic writers'."""
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise WriteError(path, exc) from None


def is_temporary(name: str) -> bool:
    """Whether a file name is one of atomic_path's temporaries."""
    return _TEMPORARY.match(name) is not None


def remove_stale_temporaries(directory: Path) -> int:
    """Delete temporaries left by killed writers; call only while holding the directory's lock."""
    removed = 0
    for entry in Path(directory).iterdir():
        if is_temporary(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


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
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                handle.close()
                raise CharRNNError(
                    f"cannot lock {path} ({exc.strerror}); this file system may not support locks "
                    "(e.g. NFS without lockd): use a local folder for the run"
                ) from None
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on {info['host']}, {info['purpose']} since {info['since']}"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise CharRNNError(
                f"{self.directory} is in use by another charrnn ({who}); wait for it to finish "
                "or stop it first (Ctrl-C), then try again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "purpose": self.purpose,
                    "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": " ".join(sys.argv),
                }
            )
            + "\n"
        )
        handle.flush()
        self._handle = handle
        return self

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
