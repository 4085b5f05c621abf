"""The one text reader: a --text (file, folder, glob, URL, built-in name) read as a stream of pieces.

Training's preparation (prepare.py) and `load_text` (scoring, summaries, small texts) both read through
`stream_pieces`, so they see byte-for-byte the same text: files joined with a newline after any that
does not end with one (when there are several), BOMs dropped, `skip_chars` removed from the front, and
with decode_errors="skip" the files that do not decode left out whole.

Pieces are bytes where the text is ASCII (its bytes are its code points: no decoder, no per-character
Python) and str elsewhere; the files are read CHUNK bytes at a time and never held whole.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.config import DECODE_ERRORS
from charrnn.data.sources import Source, check_encoding, decode_error, resolve, skipped_message
from charrnn.errors import CharRNNError

CHUNK = 4 << 20  # bytes read at a time


BLOCK = 64 << 10  # granularity of the pure-ASCII fast path within a chunk
# Codecs whose ASCII bytes always mean the ASCII characters, whatever came before (no shift states).


ASCII_COMPATIBLE = {"utf-8", "ascii", "iso8859-1", "cp1252"}


_said: set[str] = set()  # notes already given by this process


def say_once(out, line: str) -> None:
    """A note on `out` (stderr), once per process: a run reads its text more than once."""
    if line not in _said:
        _said.add(line)
        out.write(f"charrnn: {line}\n")
        out.flush()


class Undecodable(CharRNNError):
    """A file that is not valid in the encoding (what --decode-errors skip leaves out; unreadable files are errors)."""


def _file_pieces(path: Path, label: str, codec: str, errors: str, meter=None) -> Iterator[bytes | str]:
    """The decoded text of one file in pieces: ASCII as bytes (they are their own code points), the rest
    as str. A UTF-8 BOM (and a leading U+FEFF of any encoding) is dropped, whatever the encoding."""
    decoder = codecs.getincrementaldecoder(codec)("replace" if errors == "replace" else "strict")
    fast = codec in ASCII_COMPATIBLE
    at_start, position, head = True, 0, b""
    with _open_regular(path) as handle:
        while True:
            try:
                data = handle.read(CHUNK if position else max(CHUNK, 4))  # a BOM is never split
            except OSError as exc:
                raise CharRNNError(f"cannot read {path}: {exc.strerror}") from None
            if meter is not None:
                meter.add(len(data))
            if position == 0:
                head = data[:4]
                if codec == "utf-8" and data.startswith(codecs.BOM_UTF8):
                    data, position = data[3:], 3
            for start, end, ascii in _runs(data) if fast else [(0, len(data), False)]:
                run = data[start:end]
                pending = decoder.getstate()[0]
                if ascii and not pending:
                    piece: bytes | str = run
                else:
                    try:
                        piece = decoder.decode(run, final=not data)
                    except UnicodeDecodeError as exc:
                        raise Undecodable(str(decode_error(exc, label, head, position - len(pending)))) from None
                    if at_start and piece:
                        at_start = False
                        piece = piece[1:] if piece.startswith("\ufeff") else piece
                    if piece.isascii():  # O(1) in CPython: the common case takes the bytes path
                        piece = piece.encode("ascii")
                at_start = at_start and not piece
                position += len(run)
                if piece:
                    yield piece
            if not data:
                return


def _open_regular(path: Path):
    """`path` opened for reading, or an error if it is not a regular file. Non-blocking, since a file
    swapped for a FIFO after it was listed would otherwise block the open until a writer came."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CharRNNError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise CharRNNError(f"{path} is no longer a regular file; run again")
    return os.fdopen(descriptor, "rb")  # O_NONBLOCK changes nothing for a regular file


def _runs(data: bytes) -> list[tuple[int, int, bool]]:
    """(start, end, pure ASCII) runs of `data` in BLOCK-sized steps: in real text a few non-ASCII
    characters would otherwise send a whole chunk through the (slower) decoder and UTF-32."""
    if not data:
        return [(0, 0, False)]
    array = np.frombuffer(data, np.uint8)
    full = len(array) // BLOCK * BLOCK
    flags = list(array[:full].reshape(-1, BLOCK).max(axis=1) < 0x80) if full else []
    if full < len(array):
        flags.append(array[full:].max() < 0x80)
    runs = []
    for index, ascii in enumerate(flags):
        start = index * BLOCK
        if runs and runs[-1][2] == ascii:
            runs[-1] = (runs[-1][0], min(start + BLOCK, len(array)), ascii)
        else:
            runs.append((start, min(start + BLOCK, len(array)), bool(ascii)))
    return runs


def stream_pieces(
    files, labels, codec, errors, skip_chars, joined, meter=None
) -> Iterator[tuple[int, bytes | str | None]]:
    """(file index, piece) of the joined text after `skip_chars`. With errors="skip", a file that fails
    yields (index, None) after its pieces so far: the consumer drops them (and the skip count rewinds)."""
    remaining = skip_chars
    for index, (path, label) in enumerate(zip(files, labels)):
        saved, last = remaining, None
        try:
            for piece in _file_pieces(path, label, codec, errors, meter):
                last = piece[-1:]
                if remaining:
                    cut = min(remaining, len(piece))
                    piece, remaining = piece[cut:], remaining - cut
                if piece:
                    yield index, piece
        except Undecodable:
            if errors != "skip" or len(files) == 1:
                raise
            remaining = saved
            yield index, None
            continue
        if joined and last is not None and last not in (b"\n", "\n"):
            if remaining:
                remaining -= 1  # the joining newline is skipped like any character
            else:
                yield index, b"\n"


def open_text(spec: str, encoding: str, skip_chars: int, data_dir, decode_errors: str) -> tuple[str, Source]:
    """Check a request to read a text and resolve it: (the codec's name, the files)."""
    if skip_chars < 0:
        raise CharRNNError(f"--skip-chars must be >= 0; got {skip_chars}")
    if decode_errors not in DECODE_ERRORS:
        raise CharRNNError(f"--decode-errors must be one of {', '.join(DECODE_ERRORS)}; got {decode_errors!r}")
    check_encoding(encoding)
    return codecs.lookup(encoding).name, resolve(spec, data_dir)


def no_text(source: str, skip_chars: int) -> CharRNNError:
    """The error for a text that is empty once read (and `skip_chars` removed)."""
    return CharRNNError(
        f"{source}: no text left to train on" + (f" after skipping {skip_chars} characters" if skip_chars else "")
    )


@dataclass(frozen=True)
class Corpus:
    """A whole text in memory, with its fingerprint."""

    text: str
    name: str  # short name, used for default run directories
    source: str  # what the user asked for, resolved (paths, URL)
    sha256: str  # of the text's UTF-8 bytes, so a run records exactly what it saw


def load_text(
    spec: str = "shakespeare",
    *,
    encoding: str = "utf-8",
    skip_chars: int = 0,
    data_dir=None,
    decode_errors: str = "fail",
) -> Corpus:
    """A text read whole into memory (for small texts and tests; training and scoring stream it through
    prepare.py), read exactly as preparation reads it."""
    codec, found = open_text(spec, encoding, skip_chars, data_dir, decode_errors)
    for note in found.notes:
        say_once(sys.stderr, note)
    files, labels = list(found.files), list(found.labels)
    parts: dict[int, list[str]] = {}
    failed = []
    for index, piece in stream_pieces(files, labels, codec, decode_errors, skip_chars, joined=len(files) > 1):
        if piece is None:  # the file did not decode and decode_errors="skip": leave it out whole
            parts.pop(index, None)
            failed.append(labels[index])
            continue
        parts.setdefault(index, []).append(piece.decode("ascii") if isinstance(piece, bytes) else piece)
    if failed:
        print(f"charrnn: {skipped_message(failed, encoding)}", file=sys.stderr)
    text = "".join("".join(parts[i]) for i in sorted(parts))
    if not text:
        raise CharRNNError(
            f"{found.source}: no text left to train on"
            + (f" after skipping {skip_chars} characters" if skip_chars else "")
        )
    sha = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return Corpus(text=text, name=found.name, source=found.source, sha256=sha)
