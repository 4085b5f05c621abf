"""Streaming preparation: a text of any size becomes a cached .npy of ids that training memory-maps.

The files are read in chunks and never held whole. Pass 1 decodes them and collects the distinct
characters (the vocabulary) and the length; pass 2 decodes them again, hashes the text (SHA-256 of its
UTF-8, the fingerprint a run records and --resume checks) and writes the ids. The text is read by
reader.py, as `load_text` reads it, so the result is `Vocab.from_text(load_text(...).text)` and
`vocab.encode(text)`.

Speed, with no per-character Python: pure-ASCII runs (64 KB blocks) of ASCII-compatible encodings skip
the decoder, since their bytes are their code points; the rest goes through an incremental decoder. The
vocabulary pass deletes the ASCII bytes already known with bytes.translate and decodes only what is left;
the encoding pass maps ASCII with bytes.translate and other text through UTF-32 (fixed width, so its bytes
are code points) and a code point -> id table.

The cache (`<cache dir>/prepared/`) is keyed by what was asked (files with size and mtime, encoding,
decode_errors, skip_chars): a second run or --resume finds `<sha256>-<vocab>.npy` and starts without
reading the text, once the ids verify (cache.py). A file lock lets concurrent runs (and DDP ranks) wait
for one preparation.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from charrnn.data import cache
from charrnn.data.cache import Prepared
from charrnn.data.reader import CHUNK, no_text, open_text, say_once, stream_pieces
from charrnn.data.sources import skipped_message
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.storage.files import atomic_path

__all__ = ["Prepared", "in_vocab", "prepare"]

PROGRESS_MIN_BYTES = 16 << 20  # smaller texts prepare too fast for a progress bar to help


class _Meter:
    """MB/s progress on stderr: redrawn in place on a terminal, a plain line every 10% otherwise."""

    def __init__(self, out: TextIO, label: str, total: int):
        self.out, self.label, self.total = out, label, max(1, total)
        self.show = total >= PROGRESS_MIN_BYTES
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.started = self.last = time.perf_counter()
        self.done, self.next_tenth = 0, 1

    def add(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.perf_counter()
        tenth = 10 * self.done // self.total
        if not self.show or (self.tty and now - self.last < 0.5) or (not self.tty and tenth < self.next_tenth):
            return
        self.last, self.next_tenth = now, tenth + 1
        self._write(now)

    def _write(self, now: float) -> None:
        rate = self.done / 1e6 / max(now - self.started, 1e-9)
        line = f"{self.label}: {self.done / 1e6:,.0f}/{self.total / 1e6:,.0f} MB, {rate:,.0f} MB/s"
        self.out.write(("\r" + line) if self.tty else (line + "\n"))
        self.out.flush()

    def close(self) -> None:
        if self.show and self.tty:
            self._write(time.perf_counter())
            self.out.write("\n")
            self.out.flush()


def _points(piece: bytes | str) -> np.ndarray:
    if isinstance(piece, bytes):
        return np.frombuffer(piece, np.uint8)
    return np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), np.uint32)


def _scan(files, labels, codec, errors, skip_chars, joined, out) -> tuple[list[int], int, set[int]]:
    """Pass 1: (sorted distinct code points, characters, indices of the files that failed to decode)."""
    meter = _Meter(out, "preparing: pass 1/2 (vocabulary)", sum(p.stat().st_size for p in files))
    chars, failed = 0, set()
    known: set[str] = set()  # characters of the files decoded to the end
    current, pending, pending_chars = -1, set(), 0
    # New characters are found without looking at each one: bytes.translate deletes (at memory speed)
    # the ASCII bytes already known from the piece's UTF-8, and only what is left is decoded and added.
    # Multi-byte UTF-8 sequences have no ASCII bytes, so deleting ASCII never breaks one.
    delete = b""

    def refresh() -> None:
        nonlocal delete
        delete = bytes(sorted(ord(c) for c in known | pending if ord(c) < 0x80))

    # A file's characters count only once it has decoded to the end (errors="skip" may drop it).
    for index, piece in stream_pieces(files, labels, codec, errors, skip_chars, joined, meter):
        if index != current:
            known |= pending
            chars += pending_chars
            current, pending, pending_chars = index, set(), 0
            refresh()
        if piece is None:
            failed.add(index)
            pending, pending_chars = set(), 0
            refresh()
            continue
        pending_chars += len(piece)
        utf8 = piece if isinstance(piece, bytes) else piece.encode("utf-8", "surrogatepass")
        rest = utf8.translate(None, delete)
        if rest:
            new = set(rest.decode("utf-8", "surrogatepass")) - known - pending
            if new:
                pending |= new
                refresh()
    known |= pending
    chars += pending_chars
    meter.close()
    return sorted(map(ord, known)), chars, failed


def _write_ids(
    dest: Path, files, labels, codec, errors, skip_chars, joined, vocab: Vocab, chars: int, out
) -> tuple[str, str]:
    """Pass 2: write the ids as a .npy (header, then the array streamed); return the SHA-256 of the text
    and of the ids (the cache's check, taken here so the ids are not read again)."""
    table = np.zeros(ord(vocab.chars[-1]) + 1, vocab.dtype)  # code point -> id
    table[[ord(c) for c in vocab.chars]] = np.arange(len(vocab), dtype=vocab.dtype)
    # ASCII pieces: bytes.translate maps them at memory speed. ASCII sorts first, so ASCII ids are < 128
    # and fit a byte whatever the vocabulary's size; wider ids are the same bytes zero-extended.
    ascii_in_vocab = bytes(ord(c) for c in vocab.chars if ord(c) < 0x80)
    translate = bytes(np.resize(table[:0x80], 256).astype(np.uint8))
    digest, ids_digest = hashlib.sha256(), hashlib.sha256()
    meter = _Meter(out, "preparing: pass 2/2 (encoding)", sum(p.stat().st_size for p in files))
    written = 0
    changed = CharRNNError("the text changed while it was being prepared; run again")
    with atomic_path(dest) as tmp, open(tmp, "wb") as handle:
        header = {"descr": np.lib.format.dtype_to_descr(vocab.dtype), "fortran_order": False, "shape": (chars,)}
        np.lib.format.write_array_header_1_0(handle, header)
        for _, piece in stream_pieces(files, labels, codec, errors, skip_chars, joined, meter):
            if piece is None:
                raise changed
            if written + len(piece) > chars:
                raise changed
            if isinstance(piece, bytes):
                if piece.translate(None, ascii_in_vocab):
                    raise changed
                digest.update(piece)
                ids = piece.translate(translate)
                ids = ids if vocab.dtype == np.uint8 else np.frombuffer(ids, np.uint8).astype(vocab.dtype).tobytes()
                ids_digest.update(ids)
                handle.write(ids)
            else:
                points = _points(piece)
                if int(points.max()) >= len(table):
                    raise changed
                digest.update(piece.encode("utf-8", "surrogatepass"))
                ids = table.take(points).tobytes()
                ids_digest.update(ids)
                handle.write(ids)
            written += len(piece)
        if written != chars:
            raise changed
        handle.flush()
    meter.close()
    return digest.hexdigest(), ids_digest.hexdigest()


def prepare(
    spec: str = "shakespeare",
    *,
    encoding: str = "utf-8",
    skip_chars: int = 0,
    data_dir=None,
    decode_errors: str = "fail",
    out: TextIO | None = None,
) -> Prepared:
    """The ids, vocabulary and fingerprint of a text, from the cache or prepared now (two streaming passes)."""
    codec, found = open_text(spec, encoding, skip_chars, data_dir, decode_errors)
    out = out if out is not None else sys.stderr
    for note in found.notes:
        say_once(out, note)
    folder = cache.folder()
    key = cache.request_key(found.files, codec, decode_errors, skip_chars)
    entry = folder / f"{key}.json"
    with cache.locked(folder / f"{key}.lock"):
        prepared, problem = cache.lookup(entry, found.name, found.source)
        if prepared is not None:
            if prepared.skipped:  # said on every run, not only the one that prepared it
                out.write(f"charrnn: {skipped_message(list(prepared.skipped), encoding)}\n")
            return prepared
        if problem:
            out.write(f"charrnn: the prepared cache of {found.source} did not verify ({problem}); preparing it again\n")
        for stale in folder.glob(f"*{key}.partial.npy*"):  # left by a preparation that was killed
            stale.unlink(missing_ok=True)
        return _prepare_now(entry, found, codec, decode_errors, skip_chars, encoding, out)


def _prepare_now(entry: Path, found, codec: str, errors: str, skip_chars: int, encoding: str, out) -> Prepared:
    """Both passes over the text, then the ids and their manifest into the cache (under its lock)."""
    files, labels = list(found.files), list(found.labels)
    joined = len(files) > 1  # a newline between files only when there are several
    started = time.perf_counter()
    points, chars, failed = _scan(files, labels, codec, errors, skip_chars, joined, out)
    if chars == 0:
        raise no_text(found.source, skip_chars)
    skipped = [labels[i] for i in sorted(failed)]
    if skipped:
        out.write(f"charrnn: {skipped_message(skipped, encoding)}\n")
    keep = [i for i in range(len(files)) if i not in failed]
    vocab = Vocab(tuple(chr(p) for p in points))
    vocab_key = hashlib.sha256(vocab.to_json().encode()).hexdigest()[:12]
    partial = entry.parent / f".{entry.stem}.partial.npy"
    kept_files, kept_labels = [files[i] for i in keep], [labels[i] for i in keep]
    sha, ids_sha = _write_ids(partial, kept_files, kept_labels, codec, errors, skip_chars, joined, vocab, chars, out)
    ids_name = f"{sha[:32]}-{vocab_key}.npy"
    os.replace(partial, entry.parent / ids_name)  # replaces a link planted there, never writes through it
    manifest = {
        "ids": ids_name,
        "sha256": sha,
        "chars": chars,
        "vocab": list(vocab.chars),
        "skipped": skipped,
        "source": found.source,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return cache.store(entry, manifest, ids_sha, found.name, found.source)


def in_vocab(prepared: Prepared, vocab: Vocab, drop_unknown: bool = False) -> np.ndarray:
    """`prepared`'s ids renumbered in `vocab` (a model's), for scoring a text with it. The same vocabulary
    returns the memory-mapped ids as they are; another is mapped CHUNK ids at a time into a temporary
    memory-mapped file, so a text of any size is scored in bounded memory."""
    if prepared.vocab.chars == vocab.chars:
        return prepared.ids
    index = {c: i for i, c in enumerate(vocab.chars)}
    missing = [c for c in prepared.vocab.chars if c not in index]
    if missing and not drop_unknown:
        shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise CharRNNError(
            f"text has {len(missing)} character(s) the model never saw: {shown}; "
            "remove them or ask to drop unknown characters"
        )
    table = np.array([index.get(c, -1) for c in prepared.vocab.chars], np.int64)  # corpus id -> model id
    with tempfile.TemporaryFile(dir=prepared.path.parent) as handle:
        count = 0
        for start in range(0, len(prepared.ids), CHUNK):
            ids = table[prepared.ids[start : start + CHUNK]]
            ids = ids[ids >= 0].astype(vocab.dtype)
            handle.write(ids.tobytes())
            count += len(ids)
        handle.flush()
        if count == 0:
            return np.zeros(0, vocab.dtype)
        return np.memmap(handle, dtype=vocab.dtype, mode="r", shape=(count,))  # the mapping outlives the file
