import http.server
import threading

import numpy as np
import pytest

from charrnn.data.batches import Batches, eval_batches, split
from charrnn.data.reader import load_text
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError


def test_tutorial_vocabulary_and_encoding(shakespeare):
    vocab = Vocab.from_text(shakespeare)
    assert len(shakespeare) == 1_115_394 and len(vocab) == 65
    ids = vocab.encode("First Citizen")
    assert ids.tolist() == [18, 47, 56, 57, 58, 1, 15, 47, 58, 47, 64, 43, 52]
    assert ids.dtype == np.uint8 and vocab.decode(ids) == "First Citizen"


def test_vocab_dtype_grows_and_roundtrips(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(300)) + "abc"
    vocab = Vocab.from_text(text)
    assert vocab.encode(text).dtype == np.uint16
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == vocab
    with pytest.raises(CharRNNError, match="never saw"):
        vocab.encode("xyz!")
    assert vocab.decode(vocab.encode("a?b", drop_unknown=True)) == "ab"


def test_builtin_shakespeare_from_data_dir(shakespeare):
    corpus = load_text("shakespeare")
    assert corpus.text == shakespeare and corpus.name == "shakespeare"


def test_builtin_missing_offline_says_where_to_put_it(tmp_path, monkeypatch):
    import charrnn.data.sources as corpus

    monkeypatch.delenv("CHARRNN_DATA_DIR")

    def offline(*a, **k):
        raise corpus.urllib.error.URLError("no network")

    monkeypatch.setattr(corpus.urllib.request, "urlopen", offline)
    with pytest.raises(CharRNNError, match=r"put shakespeare.txt in .*CHARRNN_DATA_DIR"):
        load_text("shakespeare")


def test_builtin_with_wrong_content_is_refused(tmp_path):
    (tmp_path / "shakespeare.txt").write_text("not it")
    with pytest.raises(CharRNNError, match="SHA-256"):
        load_text("shakespeare", data_dir=tmp_path)


def test_bom_dropped_and_invalid_utf8_named(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhello")
    assert load_text(str(tmp_path / "bom.txt")).text == "hello"
    (tmp_path / "bad.txt").write_bytes(b"good \xff bad")
    with pytest.raises(CharRNNError, match=r"bad.txt: invalid utf-8 at byte 5.*--encoding"):
        load_text(str(tmp_path / "bad.txt"))
    assert load_text(str(tmp_path / "bad.txt"), encoding="latin-1").text == "good \xff bad"
    with pytest.raises(CharRNNError, match="unknown encoding"):
        load_text(str(tmp_path / "bom.txt"), encoding="nope-8")


def test_folder_glob_and_skip(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "b.txt").write_text("second")
    (folder / "a.txt").write_text("first\n")
    (folder / "skip.md").write_text("not text")
    assert load_text(str(folder)).text == "first\nsecond\n"
    assert load_text(str(folder / "*.txt")).text == "first\nsecond\n"
    assert load_text(str(folder / "a.txt"), skip_chars=2).text == "rst\n"
    with pytest.raises(CharRNNError, match="no text left"):
        load_text(str(folder / "a.txt"), skip_chars=100)
    with pytest.raises(CharRNNError, match="no such file"):
        load_text(str(tmp_path / "missing.txt"))
    with pytest.raises(CharRNNError, match="no files match"):
        load_text(str(tmp_path / "*.none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharRNNError, match="no \\*.txt"):
        load_text(str(tmp_path / "empty"))


def test_url_downloaded_once_into_cache(tmp_path):
    (tmp_path / "poem.txt").write_text("roses are red\n")
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path), **k)

        def log_message(self, *a):
            hits.append(a)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/poem.txt"
        assert load_text(url).text == "roses are red\n"
        assert load_text(url).text == "roses are red\n"
        assert len(hits) == 1  # the second load came from the cache
        with pytest.raises(CharRNNError, match="could not download"):
            load_text(f"http://127.0.0.1:{server.server_port}/missing.txt")
    finally:
        server.shutdown()


def test_tutorial_batches(shakespeare):
    ids = Vocab.from_text(shakespeare).encode(shakespeare)
    train, val = split(ids, 0.0)
    assert len(val) == 0
    batches = Batches(train, batch_size=64, seq_len=100)
    assert len(batches) == 172
    inputs, targets = next(batches.epoch(0))
    assert inputs.shape == targets.shape == (64, 100)
    assert (inputs[:, 1:] == targets[:, :-1]).all()
    assert not (batches.order(0) == batches.order(1)).all()  # reshuffled every epoch
    assert (batches.order(3) == Batches(train, 64, 100).order(3)).all()  # and reproducibly


def test_split_and_eval_cover_text():
    ids = np.arange(1000) % 7
    train, val = split(ids.astype(np.uint8), 0.1)
    assert len(train) == 900 and (val == ids[900:]).all()
    scored = sum(t.numel() for _, t in eval_batches(val, seq_len=30, batch_size=2))
    assert scored == 3 * 30 + 6  # 3 full chunks of 31 (30 targets each) + the 7-char tail (6 targets)


def test_too_short_text_is_a_clear_error():
    with pytest.raises(CharRNNError, match="too short for one batch"):
        Batches(np.zeros(100, np.uint8), batch_size=64, seq_len=100)


def test_reading_checks_its_request_as_preparing_does(tmp_path):
    (tmp_path / "t.txt").write_text("abc\n", encoding="utf-8")
    with pytest.raises(CharRNNError, match="--decode-errors must be one of fail, skip, replace"):
        load_text(str(tmp_path / "t.txt"), decode_errors="ignore")
    with pytest.raises(CharRNNError, match="no text left to train on after skipping 9 characters"):
        load_text(str(tmp_path / "t.txt"), skip_chars=9)
