"""Scale: streaming preparation (same ids, vocabulary and SHA-256 as loading the text whole), the cache,
bounded evaluation, --decode-errors, and DDP training on 2 CPU processes."""

import io
import os
import time

import numpy as np
import pytest

import charrnn.data.prepare as prep
import charrnn.data.reader as reader
from charrnn.data.batches import eval_batches, eval_sample
from charrnn.data.reader import load_text
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from conftest import TINY, run_cli


def assert_same_as_whole(spec, **options):
    """prepare() must give exactly what load_text + Vocab.from_text + encode give."""
    corpus = load_text(spec, **options)
    vocab = Vocab.from_text(corpus.text)
    prepared = prep.prepare(spec, out=open(os.devnull, "w"), **options)
    assert prepared.vocab == vocab
    assert prepared.sha256 == corpus.sha256 and prepared.chars == len(corpus.text)
    assert prepared.ids.dtype == vocab.dtype and np.array_equal(prepared.ids, vocab.encode(corpus.text))
    return prepared


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("chunk, block", [(1, 1), (3, 2), (7, 2), (64, 4), (4 << 20, 64 << 10)])
def test_streaming_matches_whole_text(tmp_path, monkeypatch, chunk, block):
    monkeypatch.setattr(reader, "CHUNK", chunk)  # tiny chunks split multi-byte characters and BOMs
    monkeypatch.setattr(reader, "BLOCK", block)  # and ASCII runs inside a chunk
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"\xef\xbb\xbf\xef\xbb\xbfhello w\xc3\xb6rld")  # two BOMs, no final newline
    (folder / "b.txt").write_text("caf\u00e9 \u4e2d\u6587 \U0001f600\n", encoding="utf-8")
    (folder / "c.txt").write_text("", encoding="utf-8")
    (folder / "d.txt").write_text("plain ascii", encoding="utf-8")
    for skip in (0, 1, 5, 13, 14, 15):
        assert_same_as_whole(str(folder), skip_chars=skip)
    assert_same_as_whole(str(folder / "a.txt"))  # one file: no newline added
    (tmp_path / "l1.txt").write_bytes(bytes(range(1, 256)) * 3)
    assert_same_as_whole(str(tmp_path / "l1.txt"), encoding="latin-1")
    (tmp_path / "u16.txt").write_text("\ufeffutf-16 text \u00e9\n", encoding="utf-16")
    assert_same_as_whole(str(tmp_path / "u16.txt"), encoding="utf-16")


def test_shakespeare_and_large_vocabularies(tmp_path):
    prepared = assert_same_as_whole("shakespeare")
    assert len(prepared.vocab) == 65 and prepared.ids.dtype == np.uint8 and isinstance(prepared.ids, np.memmap)
    chinese = "".join(chr(0x4E00 + i) for i in range(3000)) * 2
    (tmp_path / "zh.txt").write_text(chinese, encoding="utf-8")
    assert assert_same_as_whole(str(tmp_path / "zh.txt")).ids.dtype == np.uint16
    huge = "".join(chr(c) for c in range(0x20, 0x20 + 70_000) if not 0xD800 <= c < 0xE000)
    (tmp_path / "huge.txt").write_text(huge, encoding="utf-8")
    prepared = assert_same_as_whole(str(tmp_path / "huge.txt"))
    assert len(prepared.vocab) > 65_536 and prepared.ids.dtype == np.uint32


def test_ascii_chunks_with_wide_ids(tmp_path, monkeypatch):
    for first, chunk in ((0x4E00, 64), (0x10000, 1 << 16)):
        monkeypatch.setattr(reader, "CHUNK", chunk)  # some chunks are pure ASCII, ids are uint16 and uint32
        wide = "".join(
            chr(first + i) for i in range(300 if first == 0x4E00 else 66_000) if not 0xD800 <= first + i < 0xE000
        )
        (tmp_path / "mixed.txt").write_text(
            "plain ascii line\n" * 5000 + wide + "\nmore ascii\n" * 8000, encoding="utf-8"
        )
        prepared = assert_same_as_whole(str(tmp_path / "mixed.txt"))
        assert prepared.ids.dtype == (np.uint16 if first == 0x4E00 else np.uint32)


def test_cache_hit_and_change(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abc abc\n" * 100, encoding="utf-8")
    first = prep.prepare(str(path))
    again = prep.prepare(str(path))
    assert not first.cached and again.cached and again.path == first.path and again.sha256 == first.sha256
    path.write_text("xyz xyz\n" * 100, encoding="utf-8")
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)
    changed = prep.prepare(str(path))
    assert not changed.cached and changed.sha256 != first.sha256 and "x" in changed.vocab


def test_decode_errors_skip_replace_and_hints(tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.txt").write_text("good one\n", encoding="utf-8")
    (folder / "b.txt").write_bytes(b"bad \xff byte")
    (folder / "c.txt").write_text("good two", encoding="utf-8")
    with pytest.raises(CharRNNError, match=r"b.txt: invalid utf-8 at byte 4.*--encoding latin-1.*--decode-errors skip"):
        prep.prepare(str(folder))
    skipped = prep.prepare(str(folder), decode_errors="skip")
    assert skipped.vocab.decode(skipped.ids) == "good one\ngood two\n" and skipped.skipped == (str(folder / "b.txt"),)
    assert "skipped 1 file(s)" in capsys.readouterr().err
    assert load_text(str(folder), decode_errors="skip").text == "good one\ngood two\n"
    replaced = assert_same_as_whole(str(folder), decode_errors="replace")
    assert "\ufffd" in replaced.vocab
    (tmp_path / "u16.txt").write_bytes("\ufeffhi".encode("utf-16-le") + b"\x00\xd8")
    with pytest.raises(CharRNNError, match="--encoding utf-16"):
        prep.prepare(str(tmp_path / "u16.txt"))
    with pytest.raises(CharRNNError, match=r"ftp:// URLs are not supported, only http\(s\)"):
        load_text("ftp://example.com/a.txt")


def test_eval_sample_is_bounded_and_fixed():
    ids = np.arange(10_000, dtype=np.uint32)
    assert eval_sample(ids, 0, 9) is ids and eval_sample(ids, 20_000, 9) is ids
    sample = eval_sample(ids, 1000, 9)
    assert len(sample) == 1000 and np.array_equal(sample, eval_sample(ids, 1000, 9))
    windows = [inputs[0].tolist() for inputs, _ in eval_batches(sample, 9, 1)]
    assert len(windows) == 100 and all(w == list(range(w[0], w[0] + 9)) for w in windows)  # real contiguous text
    assert windows[0][0] == 0 and windows[-1][0] == 10_000 - 10  # spread over the whole split
    assert np.array_equal(eval_sample(ids, 5, 9), ids[:5])  # below one window


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "latest.safetensors"))


def _assert_close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        assert np.allclose(a[name].numpy(), b[name].numpy(), atol=atol), name


DDP_ARGS = (
    "--hidden",
    str(TINY["hidden_size"]),
    "--embedding",
    str(TINY["embedding_size"]),
    "--batch-size",
    "8",
    "--seq-len",
    "50",
    "--precision",
    "fp32",
    "--seed",
    "5",
    "--checkpoint-every",
    "0",
)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def test_ddp_two_processes_match_one_and_resume_with_any_count(small_text, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    done = run_cli("train", "--text", small_text, "--run", one, "--max-steps", "3", *DDP_ARGS, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    done = run_cli(
        "train", "--nproc", "2", "--text", small_text, "--run", two, "--max-steps", "3", *DDP_ARGS, env=ONE_THREAD
    )
    assert done.returncode == 0, done.stderr
    assert "DDP: 2 processes, 4 rows" in done.stderr and done.stderr.count("run saved in") == 1  # rank 0 speaks
    _assert_close(_weights(one), _weights(two))
    # Resume each with the other process count: the checkpoint does not depend on N.
    done = run_cli("train", "--nproc", "2", "--resume", one, "--max-steps", "6", env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    done = run_cli("train", "--resume", two, "--max-steps", "6", env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    _assert_close(_weights(one), _weights(two))
    steps = [r["step"] for r in map(__import__("json").loads, (two / "metrics.jsonl").read_text().splitlines())]
    assert steps == sorted(steps) and steps[-1] == 6


def test_ddp_failing_rank_ends_the_job_with_one_line(small_text, tmp_path):
    started = time.monotonic()
    done = run_cli(
        "train",
        "--nproc",
        "2",
        "--text",
        small_text,
        "--run",
        tmp_path / "run",
        "--max-steps",
        "50",
        *DDP_ARGS,
        env={**ONE_THREAD, "CHARRNN_FAIL_RANK": "1:2"},
        timeout=180,
    )
    assert done.returncode != 0 and time.monotonic() - started < 120
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("charrnn: error: training failed on rank 1 of 2"), done.stderr
    assert "injected failure on rank 1 at step 2" in done.stderr


def test_ddp_batch_must_divide(small_text, tmp_path):
    done = run_cli(
        "train",
        "--nproc",
        "2",
        "--text",
        small_text,
        "--run",
        tmp_path / "run",
        "--max-steps",
        "1",
        *DDP_ARGS,
        "--batch-size",
        "7",
        env=ONE_THREAD,
    )
    assert done.returncode != 0 and "--batch-size 7 does not divide among 2 processes" in done.stderr


def test_progress_lines_with_mb_per_s(tmp_path, monkeypatch):
    import io

    monkeypatch.setattr(prep, "PROGRESS_MIN_BYTES", 0)
    monkeypatch.setattr(reader, "CHUNK", 1000)
    (tmp_path / "t.txt").write_text("some text\n" * 1000, encoding="utf-8")
    out = io.StringIO()
    prep.prepare(str(tmp_path / "t.txt"), out=out)
    lines = out.getvalue().splitlines()
    assert any(x.startswith("preparing: pass 1/2") and x.endswith("MB/s") for x in lines)
    assert any(x.startswith("preparing: pass 2/2") for x in lines) and "\r" not in out.getvalue()


def test_bounded_validation_is_recorded(small_text, tmp_path):
    import json

    from charrnn import TrainConfig, Trainer

    scored = {}
    for eval_chars in (500, 0):
        run = tmp_path / f"run{eval_chars}"
        config = TrainConfig(
            text=str(small_text), epochs=1, max_steps=2, batch_size=8, seq_len=50, eval_chars=eval_chars
        )
        Trainer.create(run, config, TINY, out=open(os.devnull, "w")).fit()
        assert json.loads((run / "config.json").read_text())["train"]["eval_chars"] == eval_chars
        epoch = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"][
            -1
        ]
        scored[eval_chars] = epoch["val_chars_scored"]
    assert scored == {500: 9 * 51, 0: 2_000}  # 9 windows of seq_len + 1; the whole 10% split


def test_cli_names_unsupported_url_schemes(tmp_path):
    done = run_cli("train", "--text", "ftp://example.com/a.txt", "--run", tmp_path / "run")
    assert done.returncode == 2 and done.stderr.strip() == (
        "charrnn: error: ftp:// URLs are not supported, only http(s)://; download the file and pass its path"
    )


def test_scoring_reads_the_text_as_training_does(tmp_path, monkeypatch):
    """`charrnn eval` scores prepare()'s ids renumbered in the model's vocabulary: the same characters
    as load_text gives, in any vocabulary, streamed in chunks."""
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("héllo wörld", encoding="utf-8")  # no final newline: a joining one is added
    (folder / "b.txt").write_bytes(b"\xff\xfe not utf-8")
    (folder / "c.txt").write_text("zebra\n", encoding="utf-8")
    monkeypatch.setattr(prep, "CHUNK", 3)
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache"))
    prepared = prep.prepare(str(folder), decode_errors="skip", out=io.StringIO())
    text = load_text(str(folder), decode_errors="skip").text
    assert text == "héllo wörld\nzebra\n" and prepared.vocab.decode(prepared.ids) == text
    model_vocab = Vocab.from_text("abdehlorwz \n")  # lacks é and ö
    with pytest.raises(CharRNNError, match="2 character"):
        prep.in_vocab(prepared, model_vocab)
    ids = prep.in_vocab(prepared, model_vocab, drop_unknown=True)
    assert np.array_equal(ids, model_vocab.encode(text, drop_unknown=True))
    assert prep.in_vocab(prepared, prepared.vocab) is prepared.ids
