"""Hostile texts and a hostile preparation cache: damaged or replaced ids, manifests that point outside
the cache, symbolic links planted in it, directory-link loops, FIFOs, and a URL recorded in a run."""

import contextlib
import functools
import http.server
import io
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import charrnn.data.cache as cache
import charrnn.data.prepare as prep
from charrnn.data.reader import load_text
from charrnn.data.sources import resolve
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from conftest import run_cli
from helpers import assert_one_line_error

T = ["--hidden", "16", "--embedding", "8", "--max-steps", "2", "--batch-size", "8", "--seq-len", "20"]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def text(shakespeare, tmp_path) -> Path:
    path = tmp_path / "t.txt"
    path.write_text(shakespeare[:30_000], encoding="utf-8")
    return path


def _expected(path: Path) -> np.ndarray:
    whole = load_text(str(path)).text
    return Vocab.from_text(whole).encode(whole)


def _prepare(path: Path) -> tuple[prep.Prepared, str]:
    out = io.StringIO()
    prepared = prep.prepare(str(path), out=out)
    return prepared, out.getvalue()


def _manifest(prepared: prep.Prepared) -> Path:
    [entry] = prepared.path.parent.glob("*.json")
    return entry


def _damage(path: Path, values: np.ndarray, at: int = 100) -> None:
    """Overwrite ids in place (after the .npy header), as a bad disk or a stray tool would."""
    ids = np.load(path, mmap_mode="r")
    with open(path, "r+b") as handle:
        handle.seek(ids.offset + at * ids.itemsize)
        handle.write(values.astype(ids.dtype).tobytes())


# -- the preparation cache ------------------------------------------------------------------------


def test_ids_damaged_in_range_are_prepared_again(fresh_cache, text):
    first, _ = _prepare(text)
    _damage(first.path, (np.asarray(first.ids[100:110]) + 1) % len(first.vocab))  # still valid ids
    cache.forget_verified()  # a new process
    again, said = _prepare(text)
    assert not again.cached and np.array_equal(again.ids, _expected(text))
    assert said.count("\n") == 1 and "did not verify" in said and "preparing it again" in said


def test_another_texts_ids_copied_over_are_prepared_again(fresh_cache, text, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(text.read_text(encoding="utf-8")[::-1], encoding="utf-8")  # same length and vocabulary
    first, _ = _prepare(text)
    theirs, _ = _prepare(other)
    assert theirs.ids.shape == first.ids.shape and theirs.ids.dtype == first.ids.dtype
    shutil.copyfile(theirs.path, first.path)
    cache.forget_verified()
    again, said = _prepare(text)
    assert not again.cached and again.sha256 == first.sha256 and np.array_equal(again.ids, _expected(text))
    assert "did not verify" in said


@pytest.mark.parametrize("where", ["../../x.npy", "ABSOLUTE", "sub/x.npy", "LINK"])
def test_ids_outside_the_cache_are_never_used(fresh_cache, text, tmp_path, where):
    first, _ = _prepare(text)
    entry = _manifest(first)
    manifest = json.loads(entry.read_text(encoding="utf-8"))
    outside = tmp_path / "x.npy"
    np.save(outside, np.zeros(first.chars, first.ids.dtype))  # the right shape and dtype, the wrong ids
    before = outside.read_bytes()
    if where == "ABSOLUTE":
        where = str(outside)
    elif where == "LINK":
        (entry.parent / "link.npy").symlink_to(outside)
        where = "link.npy"
    elif where == "sub/x.npy":
        (entry.parent / "sub").mkdir()
        shutil.copyfile(outside, entry.parent / "sub" / "x.npy")
    manifest["ids"] = where
    entry.write_text(json.dumps(manifest), encoding="utf-8")
    cache.forget_verified()
    again, said = _prepare(text)
    assert not again.cached and again.path.parent == entry.parent and not again.path.is_symlink()
    assert np.array_equal(again.ids, _expected(text)) and "did not verify" in said
    assert outside.read_bytes() == before


@pytest.mark.parametrize("content", ["[]", "{", '{"format_version": 2}', "null", '"x"'])
def test_a_damaged_manifest_is_prepared_again(fresh_cache, text, content):
    first, _ = _prepare(text)
    _manifest(first).write_text(content, encoding="utf-8")
    again, said = _prepare(text)
    assert not again.cached and np.array_equal(again.ids, _expected(text)) and "did not verify" in said


def test_an_edited_vocabulary_in_the_manifest_is_prepared_again(fresh_cache, text):
    first, _ = _prepare(text)
    entry = _manifest(first)
    manifest = json.loads(entry.read_text(encoding="utf-8"))
    manifest["vocab"][-1] = "\u00e9"  # a character the text does not have, in the same place
    entry.write_text(json.dumps(manifest), encoding="utf-8")
    again, said = _prepare(text)
    assert not again.cached and again.vocab == first.vocab and "did not verify" in said


def test_verified_once_per_process(fresh_cache, text, monkeypatch):
    calls = []
    real = cache._hash_ids
    monkeypatch.setattr(cache, "_hash_ids", lambda ids: calls.append(1) or real(ids))
    _prepare(text)
    cache.forget_verified()
    for _ in range(3):
        prepared, said = _prepare(text)
        assert prepared.cached and said == ""
    assert len(calls) == 1  # the preparation itself hashed as it wrote; then one check for this "process"


def test_cache_writes_do_not_follow_symbolic_links(fresh_cache, text, tmp_path):
    first, _ = _prepare(text)
    entry = _manifest(first)
    victims = {}
    for name in (entry.name, first.path.name, entry.stem + ".lock"):
        victim = tmp_path / f"victim-{name}"
        victim.write_text("keep me", encoding="utf-8")
        victims[name] = victim
        (entry.parent / name).unlink(missing_ok=True)
        (entry.parent / name).symlink_to(victim)
    missing = tmp_path / "never-created"
    cache.forget_verified()
    again, said = _prepare(text)
    assert np.array_equal(again.ids, _expected(text)) and "did not verify" in said
    assert all(victim.read_text(encoding="utf-8") == "keep me" for victim in victims.values())
    assert not (entry.parent / entry.name).is_symlink() and not again.path.is_symlink()
    (entry.parent / (entry.stem + ".lock")).unlink()
    (entry.parent / (entry.stem + ".lock")).symlink_to(missing)  # a lock link to a file that is not there
    _prepare(text)
    assert not missing.exists()


def test_out_of_range_ids_in_the_cache_do_not_break_resume(fresh_cache, text, tmp_path):
    run = tmp_path / "run"
    env = {"CHARRNN_CACHE_DIR": str(fresh_cache)}
    created = run_cli("train", "--text", text, "--run", run, *T, env=env)
    assert created.returncode == 0, created.stderr
    [ids] = (fresh_cache / "prepared").glob("*.npy")
    everywhere = np.full(len(np.load(ids, mmap_mode="r")), 255)  # every batch meets one
    _damage(ids, everywhere, at=0)
    for args in (["--resume", run, "--max-steps", "3"], ["--text", text, "--run", tmp_path / "new", *T]):
        result = run_cli("train", *args, env=env)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert "did not verify" in result.stderr
        _damage(ids, everywhere, at=0)


# -- directory-link loops, duplicates and files that are not regular files -------------------------


@pytest.fixture
def loop(shakespeare, tmp_path) -> Path:
    folder = tmp_path / "loop"
    folder.mkdir()
    (folder / "a.txt").write_text(shakespeare[:6000], encoding="utf-8")
    (folder / "sub").symlink_to(".")
    return folder


def test_a_recursive_glob_reads_each_file_once_through_a_link_loop(loop):
    found = resolve(f"{loop}/**/*.txt")
    assert found.files == (loop / "a.txt",)
    assert found.notes == (f"skipped 1 duplicate path(s) (links to files or folders already read): {loop / 'sub'}",)
    assert len(load_text(f"{loop}/**/*.txt").text) == 6000


def test_two_link_loops_finish_at_once(loop):
    (loop / "again").symlink_to(".")  # glob alone would walk 2**40 paths
    (loop / "deeper").mkdir()
    (loop / "deeper" / "b.txt").write_text("b\n", encoding="utf-8")
    (loop / "deeper" / "up").symlink_to("..")
    (loop / "outside").symlink_to(loop / "deeper")  # a second way into a folder: its files once
    found = resolve(f"{loop}/**/*.txt")
    assert found.files == (loop / "a.txt", loop / "deeper" / "b.txt")
    assert "skipped 4 duplicate path(s)" in found.notes[0]


def test_a_recursive_glob_matches_as_glob_does(tmp_path):
    for name in ("a.txt", "x/b.txt", "x/y/c.txt", "x/.hidden/d.txt", ".e.txt", "x/f.md", "z/y/g.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("t", encoding="utf-8")
    import glob

    for pattern in ("**/*.txt", "x/**/*.txt", "**/y/*.txt", "**", "x/**", "*/**/c.txt", "**/.*/*.txt"):
        spec = f"{tmp_path}/{pattern}"
        expected = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        assert list(resolve(spec).files) == expected, pattern


def test_a_folder_reads_a_linked_file_once(tmp_path, shakespeare):
    (tmp_path / "b.txt").write_text("hello\n", encoding="utf-8")
    (tmp_path / "a.txt").symlink_to("b.txt")  # sorts first, but the file itself is what is kept
    found = resolve(str(tmp_path))
    assert found.files == (tmp_path / "b.txt",) and str(tmp_path / "a.txt") in found.notes[0]
    assert load_text(str(tmp_path)).text == "hello\n"


def test_training_through_a_link_loop_reads_the_text_once(loop, fresh_cache, tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        "train", "--text", f"{loop}/**/*.txt", "--run", run, *T, env={"CHARRNN_CACHE_DIR": str(fresh_cache)}
    )
    assert result.returncode == 0, result.stderr
    assert "skipped 1 duplicate path(s)" in result.stderr
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["corpus"]["chars"] == 6000


def test_a_fifo_given_as_text_is_refused(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(CharRNNError, match=r"pipe.txt is a FIFO \(named pipe\), not a regular file"):
        resolve(str(fifo))
    assert_one_line_error(run_cli("train", "--text", fifo, "--run", tmp_path / "r", *T, timeout=60), "FIFO", "cat ")


def test_a_folder_skips_what_is_not_a_regular_file_and_says_so(tmp_path, fresh_cache):
    (tmp_path / "a.txt").write_text("hello\n", encoding="utf-8")
    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "gone.txt").symlink_to(tmp_path / "nowhere")
    (tmp_path / "folder.txt").mkdir()  # a folder named like a text: not a file, nothing to say
    for spec in (str(tmp_path), f"{tmp_path}/*.txt", f"{tmp_path}/**/*.txt"):
        found = resolve(spec)
        assert found.files == (tmp_path / "a.txt",)
        assert found.notes == (
            f"skipped 2 path(s) that are not regular files: {tmp_path / 'gone.txt'} (broken link), "
            f"{tmp_path / 'pipe.txt'} (FIFO)",
        ), spec
    prepared, said = _prepare(tmp_path)
    assert prepared.chars == 6 and "pipe.txt (FIFO)" in said


# -- a URL recorded in a run -----------------------------------------------------------------------


@contextlib.contextmanager
def _serving(folder: Path):
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_resume_fetches_a_recorded_url_only_when_asked(text, tmp_path):
    run = tmp_path / "run"
    first, second = tmp_path / "cache1", tmp_path / "cache2"
    with _serving(text.parent) as (base, hits):
        url = f"{base}/{text.name}"
        env = {"CHARRNN_CACHE_DIR": str(first), "NO_PROXY": "*", "no_proxy": "*"}
        assert run_cli("train", "--text", url, "--run", run, *T, env=env).returncode == 0
        assert len(hits) == 1
        env["CHARRNN_CACHE_DIR"] = str(second)  # the download is not in this cache
        refused = run_cli("train", "--resume", run, "--max-steps", "3", env=env)
        assert_one_line_error(refused, url, f"--text {url}")
        assert len(hits) == 1
        agreed = run_cli("train", "--resume", run, "--max-steps", "3", "--text", url, env=env)
        assert agreed.returncode == 0, agreed.stderr
        assert len(hits) == 2
        cached = run_cli("train", "--resume", run, "--max-steps", "4", env=env)  # downloaded: no say-so needed
        assert cached.returncode == 0, cached.stderr
        assert len(hits) == 2


def test_a_file_swapped_for_a_fifo_after_listing_is_not_waited_on(tmp_path):
    from charrnn.data.reader import stream_pieces

    fifo = tmp_path / "swapped.txt"
    os.mkfifo(fifo)  # no writer: a blocking open would never return
    with pytest.raises(CharRNNError, match="swapped.txt is no longer a regular file"):
        list(stream_pieces([fifo], [str(fifo)], "utf-8", "fail", 0, joined=False))
