"""Reliability: a user's files are never touched, every kill is survived, every damaged file is one line.

The damage matrix runs the CLI in-process (`cli.main`), which catches only CharRNNError: any other
exception fails the test with its traceback, so "one line, no traceback" is what passing means.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from charrnn import cli
from charrnn.storage.files import is_temporary
from conftest import run_cli
from helpers import TINY_FLAGS, assert_one_line_error


def main(capsys, *args) -> tuple[int, str]:
    """`charrnn ARGS` in this process: (exit code, the one stderr line)."""
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    return code, lines[-1] if lines else ""


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if is_temporary(p.name)]


# -- 1. a user's folder is never written into ------------------------------------------------------------
def test_train_refuses_a_folder_that_is_not_a_run(small_text, tmp_path):
    notes = tmp_path / "d"
    notes.mkdir()
    (notes / "metrics.jsonl").write_text("notes\n")
    result = run_cli("train", "--text", small_text, "--run", notes, "--max-steps", "1", *TINY_FLAGS)
    assert_one_line_error(result, "not a charrnn run", "choose a new or empty --run")
    assert sorted(p.name for p in notes.iterdir()) == ["metrics.jsonl"]
    assert (notes / "metrics.jsonl").read_text() == "notes\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("train", "--text", small_text, "--run", empty, "--max-steps", "1", *TINY_FLAGS).returncode == 0


def test_bad_settings_are_refused_before_anything_is_written(small_text, tmp_path, capsys):
    for seed in (str(2**64), "-1"):
        code, line = main(capsys, "train", "--text", small_text, "--run", tmp_path / "s", "--seed", seed, *TINY_FLAGS)
        assert code == 2 and "seed must be" in line
        assert not (tmp_path / "s").exists()
    config = tmp_path / "c.json"
    for train in ({"epochs": True}, {"lr": True}, {"seed": "3"}, {"val_fraction": None}):
        config.write_text(json.dumps({"train": train}))
        code, line = main(capsys, "train", "--text", small_text, "--run", tmp_path / "s", "--config", config)
        assert code == 2 and list(train)[0] in line, line
    config.write_text(json.dumps({"model": {"dropout": True}}))
    assert main(capsys, "train", "--text", small_text, "--run", tmp_path / "s", "--config", config)[0] == 2
    assert not (tmp_path / "s").exists()


def test_silently_ignored_flags_are_errors(tiny_run, tmp_path, capsys):
    code, line = main(capsys, "summary", "--vocab-size", "0")
    assert code == 2 and "vocab_size must be a positive integer" in line
    code, line = main(capsys, "train", "--resume", tiny_run, "--run", tmp_path / "other")
    assert code == 2 and "drop --run" in line
    assert not (tmp_path / "other").exists()


# -- 2, 9, 10, and the crash test: kills ------------------------------------------------------------------
def _wait_for(predicate, proc, timeout=120.0, interval=0.0005):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(interval)
    raise TimeoutError("the training run never reached the expected point")


def _train(*args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "charrnn", "train", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


CRASH_FLAGS = [
    *TINY_FLAGS,
    "--layers",
    "2",
    "--dropout",
    "0.2",
    "--epochs",
    "2",
    "--checkpoint-every",
    "2",
    "--log-every",
    "1",
    "--seed",
    "5",
    "--precision",
    "fp32",
]


def test_kill_9_at_any_moment_then_resume_ends_with_the_uninterrupted_weights(small_text, tmp_path):
    reference = tmp_path / "reference"
    assert run_cli("train", "--text", small_text, "--run", reference, *CRASH_FLAGS).returncode == 0
    run = tmp_path / "crashed"
    kills, mid_write = 0, 0
    # Before the first checkpoint: the run folder exists with config.json and nothing to resume from.
    proc = _train("--text", small_text, "--run", run, *CRASH_FLAGS)
    assert _wait_for(lambda: (run / "config.json").exists(), proc)
    proc.kill()
    proc.wait()
    kills += 1
    assert not (run / "trainer_state.pt").exists()
    # Then during checkpoint writes: kill the moment a temporary file appears (the n-th one, so the kills
    # spread over the run), leaving half-written temporaries behind.
    finished = False
    while not finished:
        assert kills < 40, "the run does not progress between kills"
        proc = _train("--resume", run)
        target, seen = 1 + kills % 3, set()

        def writing(seen=seen, target=target):
            seen.update(name for name in os.listdir(run) if is_temporary(name))
            return len(seen) >= target

        if kills < 12 and _wait_for(writing, proc):
            proc.kill()
            proc.wait()
            kills += 1
            mid_write += bool(temporaries(run))
        else:
            _, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr
            finished = True
    assert kills >= 10 and mid_write >= 1, (kills, mid_write)
    assert temporaries(run) == []  # removed by the resume that followed each kill
    got, want = load_file(str(run / "latest.safetensors")), load_file(str(reference / "latest.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    epochs = [
        r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"
    ]
    assert epochs == [1, 2]


def test_sigterm_saves_a_checkpoint_and_a_second_trainer_is_refused(small_text, tmp_path):
    run = tmp_path / "term"
    proc = _train("--text", small_text, "--run", run, "--epochs", "200", "--log-every", "1", *TINY_FLAGS)
    assert _wait_for(lambda: (run / "metrics.jsonl").exists(), proc)
    second = run_cli("train", "--resume", run)
    assert_one_line_error(second, "is in use by another charrnn", f"pid {proc.pid}")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "SIGTERM: stopping after this step" in stderr and f"charrnn train --resume {run}" in stderr
    assert "Traceback" not in stderr and (run / "trainer_state.pt").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    resumed = run_cli("train", "--resume", run, "--max-steps", "1")  # already past: stops at once
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "metrics.jsonl").read_text().splitlines()[: len(lines)] == lines


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs, for a real full disk (root with mount rights only, as on CI's machine)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the fake-disk test below still runs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_naming_the_intact_checkpoint(small_text, small_disk):
    run = small_disk / "run"
    proc = _train("--text", small_text, "--run", run, "--epochs", "100", "--checkpoint-every", "1", *TINY_FLAGS)
    assert _wait_for(lambda: (run / "trainer_state.pt").exists(), proc)
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # unbuffered: take every free byte
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.startswith("charrnn:")]
    assert proc.returncode == 2 and "Traceback" not in stderr, stderr
    assert "the disk is full while writing" in lines[-1] and "is intact" in lines[-1], lines[-1]
    assert f"resume with: charrnn train --resume {run}" in lines[-1]
    assert temporaries(run) == []
    filler.unlink()
    resumed = run_cli("train", "--resume", run, "--epochs", "1")
    assert resumed.returncode == 0, resumed.stderr


def test_a_failed_write_says_how_to_resume(small_text, tmp_path, monkeypatch, capsys):
    """The same path without a real disk: the trainer-state write fails with ENOSPC."""
    import errno

    from charrnn.model import weights as checkpoint

    real = checkpoint.atomic_write_bytes
    calls = []

    def full(path, data):
        calls.append(Path(path).name)
        if calls.count("trainer_state.pt") > 1 and Path(path).name == "trainer_state.pt":
            from charrnn.errors import WriteError

            raise WriteError(path, OSError(errno.ENOSPC, "No space left on device"))
        return real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    run = tmp_path / "fake"
    code, line = main(
        capsys, "train", "--text", small_text, "--run", run, "--epochs", "3", "--checkpoint-every", "5", *TINY_FLAGS
    )
    assert code == 2
    assert line == (
        f"charrnn: error: the disk is full while writing {run}/trainer_state.pt; the last checkpoint "
        f"(step 5) is intact: free some space, then resume with: charrnn train --resume {run}"
    )


# -- 6, 7, 15: damaged files ------------------------------------------------------------------------------
def _damage_run(run: Path, case: str) -> None:
    state_path = run / "trainer_state.pt"
    if case == "empty trainer state":
        state_path.write_bytes(b"")
    elif case == "garbage trainer state":
        state_path.write_bytes(os.urandom(2000))
    else:
        state = torch.load(state_path, weights_only=True)
        if case == "trainer state is a list":
            state = [1, 2]
        elif case == "no optimizer":
            del state["optimizer"]
        elif case == "wrong weight shape":
            state["model"]["dense.bias"] = torch.zeros(3)
            del state["model_sha256"]  # as in a state written before checksums: the shape check must catch it
        elif case == "wrong moment shape":
            state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(2, 2)
        elif case == "bad rng":
            state["rng"] = torch.zeros(10, dtype=torch.uint8)
        elif case == "string epoch":
            state["epoch"] = "two"
        elif case == "flipped weight in state":
            state["model"]["dense.bias"] = state["model"]["dense.bias"] + 1
        torch.save(state, state_path)


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("empty trainer state", "trainer_state.pt is damaged"),
        ("garbage trainer state", "trainer_state.pt is damaged"),
        ("trainer state is a list", "holds a list"),
        ("no optimizer", "optimizer: Field required"),
        ("wrong weight shape", "does not fit the model"),
        ("wrong moment shape", "optimizer state does not fit"),
        ("bad rng", "random-number state"),
        ("string epoch", "epoch: Input should be a valid integer"),
        ("flipped weight in state", "SHA-256"),
    ],
)
def test_a_damaged_trainer_state_is_one_line(case, fragment, tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _damage_run(run, case)
    code, line = main(capsys, "train", "--resume", run, "--epochs", "3")
    assert code == 2 and fragment in line and "trainer_state.pt" in line, line
    assert "delete trainer_state.pt to restart this run from step 0" in line


def _flip_a_tensor_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # the last tensor's data ends the file
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("config without model", "model: Field required"),
        ("config is a list", "Input should be an object"),
        ("config with a bad value", "hidden_size must be a positive integer"),
        ("config not matching weights", "does not match the run's config.json"),
        ("vocab without chars", "chars: Field required"),
        ("vocab is null", "Input should be an object"),
        ("vocab of integers", "chars.0: Input should be a valid string"),
        ("vocab shorter than the model", "config.json says"),
        ("flipped byte in weights", "SHA-256"),
        ("truncated weights", "best.safetensors is damaged"),
        ("missing weights", "no checkpoint yet"),
    ],
)
def test_damaged_run_files_are_one_line(case, fragment, tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config, vocab = json.loads((run / "config.json").read_text()), json.loads((run / "vocab.json").read_text())
    if case == "config without model":
        del config["model"]
    elif case == "config is a list":
        config = [config]
    elif case == "config with a bad value":
        config["model"]["hidden_size"] = -1
    elif case == "config not matching weights":
        config["model"]["hidden_size"] = 40
    elif case == "vocab without chars":
        del vocab["chars"]
    elif case == "vocab is null":
        vocab = None
    elif case == "vocab of integers":
        vocab["chars"] = [1, 2, 3]
    elif case == "vocab shorter than the model":
        vocab["chars"] = vocab["chars"][:-1]
    elif case == "flipped byte in weights":
        _flip_a_tensor_byte(run / "best.safetensors")
    elif case == "truncated weights":
        (run / "best.safetensors").write_bytes((run / "best.safetensors").read_bytes()[:100])
    elif case == "missing weights":
        (run / "best.safetensors").unlink()
        (run / "latest.safetensors").unlink()
    (run / "config.json").write_text(json.dumps(config))
    (run / "vocab.json").write_text(json.dumps(vocab))
    code, line = main(capsys, "generate", run, "--length", "5", "--seed", "1")
    assert code == 2 and fragment in line, line


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory):
    from charrnn.export.onnx import export

    out = tmp_path_factory.mktemp("export") / "onnx"
    export(tiny_run, out)
    return out


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("garbage model", "does not match the SHA-256"),
        ("truncated model", "does not match the SHA-256"),
        ("empty model", "does not match the SHA-256"),
        ("missing model", "model.onnx is missing"),
        ("garbage model, no checksum", "cannot be loaded"),
        ("export.json is a list", "Input should be an object"),
        ("export.json without state_shape", "state_shape: Field required"),
        ("export.json with a wrong state_shape", "does not fit a 1-layer gru"),
        ("export.json with a wrong vocab_size", "does not match export.json"),
        ("vocab shorter than the model", "vocab.json has"),
        ("vocab longer than the model", "vocab.json has"),
    ],
)
def test_damaged_exports_are_one_line(case, fragment, tiny_export, tmp_path, capsys):
    out = tmp_path / "onnx"
    shutil.copytree(tiny_export, out)
    meta, vocab = json.loads((out / "export.json").read_text()), json.loads((out / "vocab.json").read_text())
    model = out / "model.onnx"
    if case.startswith("garbage model"):
        model.write_bytes(os.urandom(5000))
        if "no checksum" in case:
            del meta["model_sha256"]
    elif case == "truncated model":
        model.write_bytes(model.read_bytes()[:1000])
    elif case == "empty model":
        model.write_bytes(b"")
    elif case == "missing model":
        model.unlink()
    elif case == "export.json is a list":
        meta = []
    elif case == "export.json without state_shape":
        del meta["state_shape"]
    elif case == "export.json with a wrong state_shape":
        meta["state_shape"] = [2, "batch", meta["state_shape"][2]]
    elif case == "export.json with a wrong vocab_size":
        meta["model"]["vocab_size"] += 1
        vocab["chars"].append("\U0001f600")
    elif case == "vocab shorter than the model":
        vocab["chars"] = vocab["chars"][:-1]
    elif case == "vocab longer than the model":
        vocab["chars"].append("\U0001f600")
    (out / "export.json").write_text(json.dumps(meta))
    (out / "vocab.json").write_text(json.dumps(vocab))
    code, line = main(capsys, "generate", out, "--length", "5", "--seed", "1")
    assert code == 2 and fragment in line and "charrnn export" in line, line


def test_negative_and_huge_generation_seeds(tiny_run, tiny_export, capsys):
    for target in (tiny_run, tiny_export):
        for seed in ("-1", str(2**64)):
            code, line = main(capsys, "generate", target, "--seed", seed, "--length", "3")
            assert code == 2 and "seed must be an integer from 0 to 2**64 - 1" in line, line


def test_every_file_charrnn_writes_is_readable_by_others(tiny_run, tiny_export):
    old = os.umask(0o022)
    os.umask(old)
    for path in [*tiny_run.iterdir(), *tiny_export.iterdir()]:
        if path.is_file() and path.name != ".lock":
            assert path.stat().st_mode & 0o777 == 0o666 & ~old, path.name


CRASH_SCRIPT = """
import os, sys
from charrnn import Callback, TrainConfig, Trainer

class Crash(Callback):
    def on_step(self, trainer, loss):
        if trainer.global_step == 3:
            os._exit(9)  # like kill -9: no checkpoint, no clean-up

mode, run, text = sys.argv[1:]
config = TrainConfig(text=text, epochs=1, batch_size=16, seq_len=40, seed=5, precision="fp32", checkpoint_every=2, log_every=1)
quiet = open(os.devnull, "w")
if mode == "resume":
    Trainer.resume(run, out=quiet).fit()
else:
    model = dict(embedding_size=16, hidden_size=32, num_layers=2, dropout=0.2)
    Trainer.create(run, config, model, callbacks=[Crash()] if mode == "crash" else [], out=quiet).fit()
"""


def test_a_resume_in_a_fresh_process_is_exact(small_text, tmp_path):
    # The first training step of a process once drew from torch's global random numbers (a one-off probe
    # of oneDNN), shifting dropout's masks after a resume in a new process: found by the kill test.
    def python(*args):
        return subprocess.run(
            [sys.executable, "-c", CRASH_SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300
        )

    assert python("whole", tmp_path / "whole", small_text).returncode == 0
    assert python("crash", tmp_path / "crashed", small_text).returncode == 9  # after step 3; checkpoint at step 2
    assert python("resume", tmp_path / "crashed", small_text).returncode == 0
    got, want = (
        load_file(str(tmp_path / "crashed" / "latest.safetensors")),
        load_file(str(tmp_path / "whole" / "latest.safetensors")),
    )
    assert all(torch.equal(got[k], want[k]) for k in want)
