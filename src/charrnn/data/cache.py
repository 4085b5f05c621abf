"""The preparation cache: `<cache dir>/prepared/KEY.json` manifests, each naming a `.npy` of ids beside it.

An entry is used only once it verifies. Its manifest records a SHA-256 over its own fields and the ids,
computed while the ids were written; on the first use in each process the ids are hashed again
(SHA-256 on one core: about 500 MB/s measured, so 2 s for a 1 GB corpus of ASCII ids, small beside
preparing or training on it) and checked to lie inside the vocabulary. The ids must be a plain file
name inside the cache, a regular file and not a link, so a manifest can never send training to another
file. An entry that does not verify is prepared again,
with one line that says so; it is never an error, since the text it came from is still there.

Entries are written by atomic rename and the lock file is opened without following links, so a link
planted in the cache is replaced, never written through.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.storage.files import atomic_write_text, cache_dir

FORMAT_VERSION = 2  # 2: the manifest's checksum
HASH_BLOCK = 4 << 20  # bytes of the memory-mapped ids hashed at a time (block size made no measurable difference)

# Entries verified by this process, by the ids file's identity and the manifest they matched: a new
# run and --resume open the cache more than once, and one check per process is enough.
_verified: set[tuple] = set()


@dataclass(frozen=True)
class Prepared:
    """A prepared text: ids memory-mapped from the cache, and the fingerprint a run records."""

    ids: np.ndarray  # (chars,) uint8/16/32, read-only memmap
    vocab: Vocab
    name: str  # short name, used for default run directories
    source: str  # what the user asked for, resolved
    sha256: str  # of the text's UTF-8 bytes, as Corpus.sha256
    chars: int
    skipped: tuple[str, ...]  # files left out by decode_errors="skip"
    path: Path  # the cached .npy
    cached: bool  # True when this call found it prepared already


def folder() -> Path:
    return cache_dir() / "prepared"


def forget_verified() -> None:
    """Check every entry again on its next use, as a new process would."""
    _verified.clear()


def request_key(files, codec: str, errors: str, skip_chars: int) -> str:
    """What was asked, with each file's identity, size and times: a changed file is a new key. The inode
    change time is in it because tools that copy or sync files keep the modification time (cp -p,
    rsync -t) but cannot set ctime, so an edit that keeps the size and mtime is still noticed."""
    stats = []
    for path in files:
        try:
            st = path.stat()
        except OSError as exc:
            raise CharRNNError(f"cannot read {path}: {exc.strerror}") from None
        stats.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns])
    request = [FORMAT_VERSION, codec, errors, skip_chars, stats]
    return hashlib.sha256(json.dumps(request).encode()).hexdigest()[:32]


@contextmanager
def locked(path: Path):
    """An exclusive OS lock on `path` (where fcntl exists): one preparation at a time per cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, at worst two runs prepare the same text
        yield
        return
    descriptor = _open_lock(path)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _open_lock(path: Path) -> int:
    # O_NOFOLLOW: a link planted in place of the lock would otherwise create or open its target.
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise CharRNNError(f"cannot lock {path}: {exc.strerror}; check the cache folder's permissions") from None
    path.unlink()  # a link, which charrnn never makes: replace it with a lock file
    return os.open(path, flags, 0o666)


def checksum(ids_sha256: str, manifest: dict) -> str:
    """The SHA-256 binding the ids (by their own hash) to what the manifest says of them."""
    fields = [manifest[k] for k in ("format_version", "ids", "sha256", "chars", "vocab", "skipped")]
    return hashlib.sha256(json.dumps([ids_sha256, *fields], ensure_ascii=True).encode()).hexdigest()


def _hash_ids(ids: np.ndarray) -> tuple[str, int]:
    """(SHA-256 of the ids' bytes, their largest value), in one pass over the memory-mapped file."""
    digest, largest = hashlib.sha256(), 0
    step = max(1, HASH_BLOCK // ids.itemsize)
    for start in range(0, len(ids), step):
        block = ids[start : start + step]
        digest.update(block)
        largest = max(largest, int(block.max()))
    return digest.hexdigest(), largest


def _plain_file(directory: Path, name) -> Path:
    """`directory/name` when `name` is a plain file name and that is a regular file, not a link."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise CharRNNError("its ids are not named by a plain file name in the cache")
    path = directory / name
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        raise CharRNNError(f"{name} is missing") from None
    if not stat.S_ISREG(mode):
        raise CharRNNError(f"{name} is a link or not a regular file")
    return path


def _read_manifest(entry: Path) -> dict:
    text = _plain_file(entry.parent, entry.name).read_text(encoding="utf-8")
    manifest = json.loads(text)
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise CharRNNError("its manifest is damaged or from another version")
    for key, kind in (("ids", str), ("sha256", str), ("chars", int), ("vocab", list), ("skipped", list)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise CharRNNError(f"its manifest's {key} is damaged")
    if not all(isinstance(s, str) for s in manifest["skipped"]) or not isinstance(manifest.get("checksum"), str):
        raise CharRNNError("its manifest is damaged")
    return manifest


def _identity(path: Path, manifest: dict) -> tuple:
    # A write to the ids changes their ctime, which no tool can set back, so the same identity means the
    # bytes that were verified, under the very manifest that was verified with them.
    st = os.stat(path)
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, json.dumps(manifest))


def _verify(path: Path, ids: np.ndarray, manifest: dict, vocab: Vocab) -> None:
    if ids.shape != (manifest["chars"],) or ids.dtype != vocab.dtype or not manifest["chars"]:
        raise CharRNNError("its ids have the wrong shape or type")
    identity = _identity(path, manifest)
    if identity in _verified:
        return
    ids_sha256, largest = _hash_ids(ids)
    if checksum(ids_sha256, manifest) != manifest["checksum"]:
        raise CharRNNError("its ids or manifest were changed since it was prepared")
    if largest >= len(vocab):  # only a checksum forged along with the ids gets here
        raise CharRNNError("its ids lie outside its vocabulary")
    _verified.add(identity)


def lookup(entry: Path, name: str, source: str) -> tuple[Prepared | None, str]:
    """(the verified entry, "") or (None, why it cannot be used; "" when there is no entry)."""
    if not os.path.lexists(entry):
        return None, ""
    try:
        manifest = _read_manifest(entry)
        path = _plain_file(entry.parent, manifest["ids"])
        vocab = Vocab(tuple(manifest["vocab"]))
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
        _verify(path, ids, manifest, vocab)
    except CharRNNError as exc:
        return None, str(exc)
    except (OSError, ValueError, TypeError, KeyError, EOFError, OverflowError) as exc:
        return None, f"it cannot be read ({type(exc).__name__})"
    skipped = tuple(manifest["skipped"])
    return Prepared(ids, vocab, name, source, manifest["sha256"], manifest["chars"], skipped, path, True), ""


def store(entry: Path, manifest: dict, ids_sha256: str, name: str, source: str) -> Prepared:
    """Write `entry` for ids just prepared (whose hash `ids_sha256` was taken as they were written)."""
    manifest = {"format_version": FORMAT_VERSION, **manifest}
    manifest["checksum"] = checksum(ids_sha256, manifest)
    atomic_write_text(entry, json.dumps(manifest, ensure_ascii=True) + "\n")
    path = entry.parent / manifest["ids"]
    ids = np.load(path, mmap_mode="r", allow_pickle=False)
    _verified.add(_identity(path, manifest))
    vocab = Vocab(tuple(manifest["vocab"]))
    return Prepared(
        ids, vocab, name, source, manifest["sha256"], manifest["chars"], tuple(manifest["skipped"]), path, False
    )
