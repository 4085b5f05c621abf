"""Text in: a file, a folder of *.txt, a glob, an http(s) URL, or a built-in corpus name.

`resolve` turns a --text into local files, which reader.py reads. Each file is read once however many
links lead to it, a recursive glob enters each real folder once (so a link loop such as `sub -> .` cannot
multiply the text), and what a folder or glob leaves out (duplicates, FIFOs, broken links) is said in
`Source.notes`. Bytes are decoded strictly (a wrong encoding is an error that
names the file and byte offset, never silently replaced characters), a UTF-8 byte-order mark is dropped,
and `skip_chars` removes a prefix such as a licence header. For folders and globs, `decode_errors`
("skip" or "replace") leaves out the files that do not decode, or replaces their bad bytes with U+FFFD.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from charrnn.data.listing import gather, kind, walk_glob
from charrnn.errors import CharRNNError
from charrnn.storage.files import atomic_path, cache_dir


@dataclass(frozen=True)
class BuiltinCorpus:
    """A well-known text that can be named instead of a path."""

    filename: str
    url: str
    sha256: str
    chars: int


BUILTINS = {
    "shakespeare": BuiltinCorpus(
        filename="shakespeare.txt",
        url="https://storage.googleapis.com/download.tensorflow.org/data/shakespeare.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        chars=1_115_394,
    ),
}


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The directory searched first for built-in corpora: --data-dir, else $CHARRNN_DATA_DIR."""
    value = explicit if explicit is not None else os.environ.get("CHARRNN_DATA_DIR")
    return Path(value).expanduser() if value else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(url: str, dest: Path, timeout: float = 30.0) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(dest) as tmp:
            with open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CharRNNError(f"could not download {url}: {reason}") from None


def _builtin_path(name: str, explicit_data_dir) -> tuple[Path, str]:
    """The verified local file of a built-in corpus (downloaded once), and where it came from."""
    spec = BUILTINS[name]
    places = []
    directory = data_dir(explicit_data_dir)
    if directory is not None:
        places.append(directory / spec.filename)
    cached = cache_dir() / spec.filename
    places.append(cached)
    for path in places:
        if path.is_file():
            data = path.read_bytes()
            if _sha256(data) != spec.sha256:
                raise CharRNNError(
                    f"{path} is not the expected {name} text (SHA-256 mismatch); delete it or replace it "
                    f"with the file from {spec.url}"
                )
            return path, str(path)
    try:
        _download(spec.url, cached)
    except CharRNNError as exc:
        where = f"{directory}/ or " if directory is not None else ""
        raise CharRNNError(
            f"{exc}; offline? put {spec.filename} in {where}{cached.parent}/ "
            "(or point --data-dir / CHARRNN_DATA_DIR at its folder)"
        ) from None
    data = cached.read_bytes()
    if _sha256(data) != spec.sha256:
        cached.unlink()
        raise CharRNNError(f"the download of {spec.url} is corrupt (SHA-256 mismatch); try again")
    return cached, spec.url


def _url_file(url: str) -> Path:
    # One file per URL; the hash keeps different URLs with the same basename apart.
    name = url.rstrip("/").rsplit("/", 1)[-1] or "download"
    return cache_dir() / "urls" / f"{_sha256(url.encode())[:16]}-{name}"


def _url_path(url: str) -> Path:
    path = _url_file(url)
    if not path.is_file():
        _download(url, path)
    return path


def check_recorded_url(spec: str, given: str | None, run_dir) -> None:
    """Refuse to download a URL that came from a run folder (`spec`) unless the user gave it too (`given`).
    A run folder may come from anyone, and its URL may point anywhere this machine can reach (a service
    on its network, a tracker that learns who resumed the run). A URL already in the cache needs no
    download, so no say-so: resume checks its text against the run's SHA-256 as for any file."""
    if given == spec or not spec.startswith(("http://", "https://")) or _url_file(spec).is_file():
        return
    raise CharRNNError(
        f"{run_dir} trains on {spec}, which is not in the cache and would be downloaded; "
        f"to agree, resume with --text {spec}"
    )


def check_encoding(encoding: str) -> None:
    try:
        "".encode(encoding)
    except LookupError:
        raise CharRNNError(f"unknown encoding {encoding!r}; use a Python codec name such as utf-8 or latin-1") from None


def is_utf8(encoding: str) -> bool:
    return encoding.replace("_", "-").lower() in ("utf-8", "utf8")


def decode_error(exc: UnicodeDecodeError, origin: str, head: bytes, offset: int = 0) -> CharRNNError:
    """The one-line error for bytes that do not decode; `head` is the file's first bytes (for a hint),
    `offset` where the failing piece starts in the file."""
    # A UTF-16 byte-order mark says what the file is; otherwise latin-1 decodes any bytes.
    hint = "utf-16" if head.startswith((b"\xff\xfe", b"\xfe\xff")) else "latin-1"
    return CharRNNError(
        f"{origin}: invalid {exc.encoding} at byte {offset + exc.start} ({exc.reason}); "
        f"pass --encoding with the file's real encoding (e.g. --encoding {hint}), or for a folder or glob "
        "--decode-errors skip (leave such files out) or replace (use U+FFFD)"
    )


def skipped_message(skipped: list[str], encoding: str) -> str:
    shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    return f"skipped {len(skipped)} file(s) that are not valid {encoding} (--decode-errors skip): {shown}"


@dataclass(frozen=True)
class Source:
    """What a --text names, resolved to local files (downloads fetched into the cache)."""

    files: tuple[Path, ...]
    labels: tuple[str, ...]  # how each file is named in messages
    source: str  # what the user asked for, resolved (paths, URL)
    name: str  # short name, used for default run directories
    notes: tuple[str, ...] = ()  # what a folder or glob left out, one line each, said on stderr


def looks_like_url(spec: str) -> bool:
    """scheme://... (http, https, ftp, s3, ...): never a relative path to make absolute."""
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", str(spec)) is not None


def resolve(spec: str, data_dir: str | os.PathLike | None = None) -> Source:
    """The files behind a built-in name, URL, file, folder (*.txt, sorted) or glob pattern."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if spec in BUILTINS and not path.exists():
        file, source = _builtin_path(spec, data_dir)
        return Source((file,), (source,), source, spec)
    if spec.startswith(("http://", "https://")):
        name = Path(spec.rstrip("/").rsplit("/", 1)[-1]).stem or "download"
        return Source((_url_path(spec),), (spec,), spec, name)
    if looks_like_url(spec) and not path.exists():
        scheme = spec.split("://", 1)[0]
        raise CharRNNError(f"{scheme}:// URLs are not supported, only http(s)://; download the file and pass its path")
    if path.is_dir():
        files, notes = gather(path.glob("*.txt"))
        if not files:
            raise CharRNNError(f"folder {path} has no *.txt files; point --text at a file or a folder of .txt files")
        return Source(tuple(files), tuple(map(str, files)), str(path.resolve()), path.resolve().name, notes)
    if path.is_file():
        return Source((path,), (str(path),), str(path.resolve()), path.stem)
    if path.exists():  # neither a file nor a folder; stat only, since opening a FIFO would block
        what = kind(path.stat().st_mode)
        raise CharRNNError(
            f"{spec} is a {'FIFO (named pipe)' if what == 'FIFO' else what}, not a regular file: charrnn reads "
            f"a text more than once (and again on --resume); save it to a file first (cat {spec} > text.txt) "
            "and pass that"
        )
    if glob.has_magic(spec):
        pattern = os.path.expanduser(spec)
        if "**" in Path(pattern).parts:
            files, notes = gather(*walk_glob(pattern))
        else:
            files, notes = gather(map(Path, glob.glob(pattern)))
        if not files:
            raise CharRNNError(f"no files match {spec!r}")
        return Source(tuple(files), tuple(map(str, files)), spec, files[0].parent.name or "glob", notes)
    builtins = ", ".join(sorted(BUILTINS))
    raise CharRNNError(f"no such file, folder or built-in corpus: {spec!r} (built-ins: {builtins})")
