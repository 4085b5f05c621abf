"""Which files a folder or glob names: regular files only, each once, and what was left out.

Files are told apart by device and inode, so a symbolic (or hard) link to a file already listed is left
out. A recursive glob (`**`) is walked here rather than by glob.glob, which follows folder links
without end: a link loop such as `sub -> .` would be read 41 times over (until the path is too long),
and two such loops make 2**40 paths. Here each real folder is entered once.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import os
import stat
from pathlib import Path


def kind(mode: int | None) -> str | None:
    """What a path whose stat mode is `mode` (None: it could not be followed) is, or None for a regular file."""
    if mode is None:
        return "broken link"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file"


def _shown(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def gather(candidates, repeats: list[str] = ()) -> tuple[list[Path], tuple[str, ...]]:
    """The regular files among `candidates`, sorted, each once however many links lead to it (by device
    and inode, so hard links count too), and the notes saying what was left out; `repeats` are the
    folder links a recursive walk did not follow."""
    regular, odd = [], []
    for path in sorted(candidates):
        try:
            st = os.stat(path)
        except OSError:
            st = None
        what = kind(st.st_mode if st is not None else None)
        if what == "folder":
            continue  # a folder that matches a glob is not a text, and not worth a note
        if what is not None:
            odd.append(f"{path} ({what})")
        else:
            regular.append((path, (st.st_dev, st.st_ino)))
    # Of several paths to one file, the one without links is kept, so the note names the links.
    kept: dict[tuple[int, int], Path] = {}
    for path, identity in sorted(regular, key=lambda item: (_through_links(item[0]), item[0])):
        kept.setdefault(identity, path)
    duplicates = [*repeats, *(str(path) for path, identity in regular if kept[identity] != path)]
    notes = []
    if duplicates:
        shown = _shown(sorted(duplicates))
        notes.append(f"skipped {len(duplicates)} duplicate path(s) (links to files or folders already read): {shown}")
    if odd:
        notes.append(f"skipped {len(odd)} path(s) that are not regular files: {_shown(odd)}")
    return sorted(kept.values()), tuple(notes)


def _through_links(path: Path) -> bool:
    return os.path.realpath(path) != os.path.abspath(path)


def walk_glob(pattern: str) -> tuple[list[Path], list[str]]:
    """What glob.glob(pattern, recursive=True) finds, but entering each real folder once, so a folder
    link loop is walked once rather than 40 levels deep (and two loops, 2**40 paths, still finish).
    Real folders are walked before links, so a link, not the folder it points to, is what is left out.
    Returns the paths found and the folder links not followed."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root, rest = (Path(*parts[:first]) if first else Path(".")), parts[first:]
    seen: set[tuple[int, int]] = set()
    if not _enter(root, seen):
        return [], []
    found, repeats, stack, links = [], [], [(root, ())], []
    while stack or links:
        if stack:
            folder, rel = stack.pop()
        else:
            folder, rel = links.pop(0)
            if not _enter(folder, seen):
                repeats.append(str(folder))
                continue
        for entry in _entries(folder):
            path, inner = folder / entry.name, (*rel, entry.name)
            if not _is_folder(entry):
                if _match(rest, inner):
                    found.append(path)
            elif _match(rest, inner, partial=True):
                if entry.is_symlink():
                    links.append((path, inner))
                elif _enter(path, seen):
                    stack.append((path, inner))
    return found, repeats


def _enter(folder: Path, seen: set[tuple[int, int]]) -> bool:
    """Whether `folder` is one not entered yet (and now is); a folder that cannot be read counts as entered."""
    try:
        st = os.stat(folder)
    except OSError:
        return False
    if (st.st_dev, st.st_ino) in seen:
        return False
    seen.add((st.st_dev, st.st_ino))
    return True


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError:
        return []  # as glob does: a folder that cannot be listed has no matches


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # through links
    except OSError:
        return False


@functools.lru_cache(maxsize=4096)
def _match(pattern: tuple[str, ...], parts: tuple[str, ...], partial: bool = False) -> bool:
    """Whether a path's parts match a glob's, as glob.glob(recursive=True) has it (`**`: any number of
    folders, never hidden ones); with partial, whether a path below this folder still could."""
    if not parts:
        return partial or all(part == "**" for part in pattern)
    if not pattern:
        return False
    head, name = pattern[0], parts[0]
    if head == "**":
        return _match(pattern[1:], parts, partial) or (not name.startswith(".") and _match(pattern, parts[1:], partial))
    return _matches_name(head, name) and _match(pattern[1:], parts[1:], partial)


def _matches_name(pattern: str, name: str) -> bool:
    if not glob.has_magic(pattern):
        return pattern == name
    if name.startswith(".") and not pattern.startswith("."):
        return False  # glob's wildcards never match hidden names
    return fnmatch.fnmatchcase(name, pattern)
