"""Inputs that would exhaust the machine or divide by zero: huge prompts, endless prompt files, zero
windows, models and batches larger than memory. Each is either done in bounded memory or refused with
one line that names the setting to change."""

import io
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.generation import loop
from charrnn.generation.torch_model import CharModel
from charrnn.kernels import build, gates, step
from charrnn.model import memory
from charrnn.model.network import CharRNN
from charrnn.model.scoring import Protocols
from charrnn.model.summary import config_summary, count_parameters, summary
from conftest import run_cli
from helpers import TINY_FLAGS, assert_one_line_error

CHARS = "abcdefghij \n.,"
# Far beyond any machine's memory (1.2 PB of weights), so no test ever allocates it.
HUGE_HIDDEN = 10_000_000


def random_text(n: int, seed: int = 0) -> str:
    return "".join(np.random.default_rng(seed).choice(list(CHARS), n))


def tiny_model(cell: str = "gru", layers: int = 1, precision: str = "fp32") -> CharModel:
    torch.manual_seed(0)
    vocab = Vocab.from_text(CHARS)
    config = ModelConfig(vocab_size=len(vocab), hidden_size=24, embedding_size=8, num_layers=layers, cell=cell)
    return CharModel(CharRNN(config), vocab, precision=precision)


# -- priming in pieces ----------------------------------------------------------------------------------


def test_pieces_cover_the_prompt_and_none_is_short():
    for n in (1, 4095, 4096, 8191, 8192, 20_000):
        ids = np.arange(n)
        parts = loop.pieces(ids)
        assert np.array_equal(np.concatenate(parts), ids)
        assert all(len(p) <= 2 * loop.PRIME_PIECE - 1 for p in parts)
        assert len(parts) == 1 or all(len(p) >= loop.PRIME_PIECE for p in parts)


@pytest.fixture(params=["kernels", "pytorch"])
def path(request, monkeypatch):
    if request.param == "kernels" and not build.available():
        pytest.skip("no C compiler here: the step kernels are unavailable")
    if request.param == "pytorch":  # as without a C compiler
        monkeypatch.setattr(gates, "usable", lambda *a, **k: False)
        monkeypatch.setattr(step, "usable", lambda *a, **k: False)
    return request.param


@pytest.mark.parametrize(
    "cell, layers, precision", [("gru", 1, "fp32"), ("gru", 2, "auto"), ("lstm", 2, "fp32"), ("rnn", 1, "fp32")]
)
def test_priming_in_pieces_gives_the_one_pass_text(path, monkeypatch, cell, layers, precision):
    model = tiny_model(cell, layers, precision)
    prompt = random_text(2 * loop.PRIME_PIECE + 123)
    ids = model.vocab.encode(prompt)
    backend = model.backend(2)
    logits, state = backend.prime([ids], 2)
    with torch.inference_mode():  # one pass over the whole prompt, as priming did before it was cut in pieces
        whole, whole_state = model.model(torch.from_numpy(ids.astype(np.int64))[None], dtype=backend.dtype)
    assert np.array_equal(logits[0], whole[0, -1].numpy())
    assert torch.equal(state[:, :1], whole_state)
    pieced = model.generate(prompt, length=100, seed=5, num_samples=2)
    monkeypatch.setattr(loop, "PRIME_PIECE", 10**9)  # one piece: the whole prompt at once
    assert model.generate(prompt, length=100, seed=5, num_samples=2) == pieced


def test_priming_never_runs_more_than_a_piece(monkeypatch):
    model = tiny_model()
    lengths = []
    forward = CharRNN.forward

    def spy(self, ids, *args, **kwargs):
        lengths.append(ids.shape[1])
        return forward(self, ids, *args, **kwargs)

    monkeypatch.setattr(CharRNN, "forward", spy)
    model.generate(random_text(5 * loop.PRIME_PIECE), length=3, seed=0)
    assert max(lengths) < 2 * loop.PRIME_PIECE


def test_an_exported_model_primes_in_pieces_to_the_same_text(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from charrnn import runtime
    from charrnn.export.onnx import export

    export(tiny_run, tmp_path / "onnx")
    model = runtime.load(tmp_path / "onnx")
    prompt = "".join(np.random.default_rng(1).choice(model.vocab.chars, 2 * loop.PRIME_PIECE + 7))
    pieced = model.generate(prompt, length=200, seed=3)
    monkeypatch.setattr(loop, "PRIME_PIECE", 10**9)
    assert model.generate(prompt, length=200, seed=3) == pieced


PRIME_RSS = textwrap.dedent(
    """
    import resource, sys
    import numpy as np, torch
    from charrnn.config import ModelConfig
    from charrnn.data.vocab import Vocab
    from charrnn.generation.torch_model import CharModel
    from charrnn.model.network import CharRNN

    chars = "abcdefghij \\n"
    vocab = Vocab.from_text(chars)
    model = CharModel(CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=128, embedding_size=16)), vocab, precision="fp32")
    text = "".join(np.random.default_rng(0).choice(list(chars), 60_000))

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    model.generate(text[:6_000], length=1, seed=0)
    small = peak()
    model.generate(text, length=1, seed=0)
    print(peak() - small)
    """
)


def test_priming_memory_is_flat_in_the_prompt_length():
    # One pass over the whole prompt kept ~2 KB per character here: 60,000 characters took 110 MB more
    # than 6,000. In pieces, both stay within a piece's few megabytes.
    result = subprocess.run([sys.executable, "-c", PRIME_RSS], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 50e6, f"priming 60,000 characters took {int(result.stdout) / 1e6:.0f} MB more"


# -- --prompt-file and streamed samples -------------------------------------------------------------------


def test_a_prompt_file_over_the_limit_is_one_line(tiny_run, tmp_path):
    from charrnn.cli.commands import PROMPT_FILE_LIMIT

    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (PROMPT_FILE_LIMIT + 1))
    result = run_cli("generate", tiny_run, "--prompt-file", big, "--length", "5", timeout=60)
    assert_one_line_error(result, str(big), "16 MiB", "shorten it")
    piped = subprocess.run(
        [sys.executable, "-m", "charrnn", "generate", str(tiny_run), "--prompt-file", "-", "--length", "5"],
        input=b"a" * (PROMPT_FILE_LIMIT + 10),
        capture_output=True,
        timeout=60,
    )
    assert_one_line_error(
        subprocess.CompletedProcess(piped.args, piped.returncode, "", piped.stderr.decode()), "16 MiB"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /dev/zero")
def test_an_endless_prompt_file_is_refused_at_once(tiny_run):
    result = run_cli("generate", tiny_run, "--prompt-file", "/dev/zero", timeout=60)
    assert_one_line_error(result, "/dev/zero", "16 MiB")


def test_several_samples_stream_the_first_and_keep_the_format(tiny_run, monkeypatch):
    from charrnn.cli import commands

    model = charrnn_load(tiny_run)
    options = dict(prompt="ROMEO:", length=500, seed=2, num_samples=3)
    expected = "".join(f"--- sample {i} ---\n{text}\n" for i, text in enumerate(model.generate(**options), 1))
    monkeypatch.setattr(commands, "SPOOL_CHARS", 97)  # many blocks through the temporary file
    out = io.StringIO()
    seen = []

    def watched():
        for pieces in model.stream(**options):
            seen.append(len(out.getvalue()))
            yield pieces

    commands.write_samples(watched(), out)
    assert out.getvalue() == expected
    # Written as generated: by the last step, the first sample's text so far is already out.
    assert seen[-1] >= len("--- sample 1 ---\nROMEO:") + 498
    empty = io.StringIO()
    commands.write_samples(model.stream("A", length=0, num_samples=2), empty)
    assert empty.getvalue() == "--- sample 1 ---\nA\n--- sample 2 ---\nA\n"


def test_cli_samples_equal_the_api(tiny_run):
    result = run_cli("generate", tiny_run, "--prompt", "ROMEO", "--length", "80", "--num-samples", "3", "--seed", "9")
    assert result.returncode == 0, result.stderr
    texts = charrnn_load(tiny_run).generate("ROMEO", length=80, num_samples=3, seed=9)
    assert result.stdout == "".join(f"--- sample {i} ---\n{t}\n" for i, t in enumerate(texts, 1))


def charrnn_load(run):
    import charrnn

    return charrnn.load(run)


# -- evaluation settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--windows", "0"], "windows must be a positive integer"),
        (["--windows", "-1"], "windows must be a positive integer"),
        (["--window-len", "0"], "window_len must be a positive integer"),
    ],
)
def test_eval_window_settings_are_one_line(tiny_run, small_text, flags, fragment):
    result = run_cli("eval", tiny_run, "--text", small_text, "--protocol", "windows", *flags)
    assert_one_line_error(result, fragment)


@pytest.mark.parametrize("settings", [{"windows": 0}, {"window_len": -3}, {"batch_size": 0}, {"seq_len": True}])
def test_the_api_refuses_bad_protocol_settings(tiny_run, settings):
    with pytest.raises(CharRNNError, match="must be a positive integer"):
        Protocols(**settings)
    with pytest.raises(CharRNNError, match="must be a positive integer"):
        charrnn_load(tiny_run).evaluate("ROMEO: a text to score, long enough." * 20, protocol="windows", **settings)


# -- models and batches larger than memory ------------------------------------------------------------------


def test_parameter_count_from_the_config_matches_the_model():
    for cell in ("gru", "lstm", "rnn"):
        for layers in (1, 3):
            config = ModelConfig(vocab_size=11, hidden_size=20, embedding_size=6, num_layers=layers, cell=cell)
            model = CharRNN(config)
            assert memory.parameter_count(config) == count_parameters(model)
            assert config_summary(config) == summary(model)


def test_a_model_larger_than_memory_is_one_error_before_allocating():
    with pytest.raises(CharRNNError, match=r"the weights of a gru model of 1 x 10000000 units.*lower hidden_size"):
        CharRNN(ModelConfig(vocab_size=65, hidden_size=HUGE_HIDDEN))


def test_the_check_refuses_only_what_exceeds_available_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 10_000)
    memory.check(10_000, "a thing", "lower it")
    with pytest.raises(
        CharRNNError, match=r"a thing would take at least 10.0 KB of memory.*10.0 KB available; lower it"
    ):
        memory.check(10_001, "a thing", "lower it")
    monkeypatch.setattr(memory, "available_bytes", lambda: None)  # unknown: never refuse
    memory.check(10**30, "a thing", "lower it")


def test_failed_allocations_become_one_line():
    with pytest.raises(CharRNNError, match=r"out of memory while allocating the state \(1.2 GB\); lower it"):
        with memory.allocating("the state", "lower it"):
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                "you tried to allocate 1234567890 bytes."
            )
    with pytest.raises(CharRNNError, match="out of memory while allocating the state; lower it"):
        with memory.allocating("the state", "lower it"):
            raise MemoryError()
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not memory's
        with memory.allocating("the state", "lower it"):
            raise RuntimeError("shape mismatch")


def test_summary_of_a_model_larger_than_memory_is_printed():
    result = run_cli("summary", "--vocab-size", "65", "--hidden", "100000")
    assert result.returncode == 0, result.stderr
    assert "Total params: 30,083,916,705" in result.stdout


def test_training_a_model_larger_than_memory_leaves_no_run(small_text, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "--text", small_text, "--run", run, *TINY_FLAGS, "--hidden", str(HUGE_HIDDEN))
    assert_one_line_error(result, "of memory", "lower hidden_size")
    assert not run.exists()


def test_training_that_would_not_fit_leaves_no_run(small_text, tmp_path, monkeypatch):
    # Weights that fit, but not with their gradients and Adam's moments: refused before the folder is made.
    from charrnn import TrainConfig, Trainer

    model = {"hidden_size": 64, "embedding_size": 8}
    weights = memory.parameter_count(ModelConfig(vocab_size=1, **model)) * 4
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * weights)
    with pytest.raises(CharRNNError, match="training a gru model"):
        Trainer.create(tmp_path / "run", TrainConfig(text=str(small_text), batch_size=1, seq_len=10), model)
    assert not (tmp_path / "run").exists()


def test_generating_more_samples_than_memory_is_one_line(tiny_run):
    result = run_cli("generate", tiny_run, "--num-samples", "1000000000", "--length", "5", timeout=60)
    assert_one_line_error(result, "generating 1,000,000,000 samples together", "--num-samples")


def test_a_run_whose_config_is_larger_than_memory_is_one_line(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["hidden_size"] = HUGE_HIDDEN
    (run / "config.json").write_text(json.dumps(config))
    result = run_cli("generate", run, "--length", "5", timeout=60)
    assert_one_line_error(result, f"{run / 'config.json'}, a gru model", "of memory", "a machine with more memory")
    with pytest.raises(CharRNNError, match="of memory"):
        charrnn_load(run)
