import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_cli
from helpers import TINY_FLAGS, assert_one_line_error


def test_train_generate_eval_resume_end_to_end(small_text, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "--text", small_text, "--run", run, "--epochs", "1", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr
    assert "untrained loss" in result.stderr and "Total params" in result.stderr
    assert "epoch 1: train loss" in result.stderr and "val loss" in result.stderr

    gen = run_cli(
        "generate", run, "--prompt", "ROMEO:", "--length", "120", "--seed", "4", "--temperature", "0.8", "--top-k", "20"
    )
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("ROMEO:") and len(gen.stdout) == len("ROMEO:") + 120 + 1
    again = run_cli(
        "generate", run, "--prompt", "ROMEO:", "--length", "120", "--seed", "4", "--temperature", "0.8", "--top-k", "20"
    )
    assert again.stdout == gen.stdout

    many = run_cli("generate", run, "--prompt", "A", "--length", "20", "--num-samples", "3", "--seed", "1")
    assert many.stdout.count("--- sample") == 3

    ev = run_cli("eval", run, "--text", small_text)
    assert ev.returncode == 0 and "bits/char" in ev.stdout

    resumed = run_cli("train", "--resume", run, "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
    assert [e["epoch"] for e in epochs if e["kind"] == "epoch"] == [1, 2]

    summary = run_cli("summary", run)
    assert "Total params" in summary.stdout


def test_summary_of_the_tutorial_model():
    result = run_cli("summary")
    assert result.returncode == 0, result.stderr
    assert "Total params: 4,021,569" in result.stdout and "3,938,304" in result.stdout


def test_chinese_poetry_end_to_end(tmp_path):
    # A few thousand distinct characters (uint16 ids), including ones outside the Basic Multilingual Plane.
    import random

    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(3000)] + ["𠀀", "𠀁"]
    lines = [
        "".join(rng.choice(chars) for _ in range(7)) + "，" + "".join(rng.choice(chars) for _ in range(7)) + "。"
        for _ in range(1500)
    ]
    poems = tmp_path / "poems.txt"
    poems.write_text("\n".join(lines), encoding="utf-8")
    run = tmp_path / "zh"
    result = run_cli("train", "--text", poems, "--run", run, "--max-steps", "5", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr
    vocab = json.loads((run / "vocab.json").read_text())["chars"]
    assert len(vocab) > 2500 and "𠀀" in vocab
    prompt = lines[0][:4]
    gen = run_cli(
        "generate", run, "--prompt", prompt, "--length", "30", "--seed", "0", env={"PYTHONIOENCODING": "utf-8"}
    )
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith(prompt) and len(gen.stdout.rstrip("\n")) == 34
    assert run_cli("eval", run, "--text", poems).returncode == 0


def test_ctrl_c_saves_and_resume_continues(small_text, tmp_path):
    run = tmp_path / "int"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charrnn",
            "train",
            "--text",
            str(small_text),
            "--run",
            str(run),
            "--epochs",
            "50",
            "--log-every",
            "1",
            *TINY_FLAGS,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and f"charrnn train --resume {run}" in stderr
    resumed = run_cli("train", "--resume", run, "--max-steps", "1")  # already past: stops at once with a partial epoch
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--text", "no/such/file.txt"], ["no such file, folder or built-in corpus"]),
        (["train", "--text", "{bad}", "--batch-size", "0"], ["batch_size must be a positive integer"]),
        (["train", "--text", "{small}", "--val-fraction", "1.5"], ["val_fraction must be in [0, 1)"]),
        (["train", "--text", "{bad}"], ["invalid utf-8 at byte 3", "--encoding"]),
        (["train", "--text", "{small}", "--batch-size", "1000", "--seq-len", "100"], ["too short for one batch"]),
        (["train", "--text", "{small}", "--config", "{badconfig}"], ["unknown setting(s) hiden_size"]),
        (["train", "--resume", "{tmp}/nothing"], ["is not a charrnn run"]),
        (["generate", "{tmp}/nothing"], ["is not a charrnn run"]),
        (["summary", "--vocab-size", "65", "--hidden", "-3"], ["hidden_size must be a positive integer"]),
    ],
)
def test_bad_inputs_get_one_line_errors(args, fragments, small_text, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"abc\xfe\xfe")
    (tmp_path / "badconfig.json").write_text(json.dumps({"model": {"hiden_size": 3}}))
    values = {
        "small": small_text,
        "bad": tmp_path / "bad.txt",
        "badconfig": tmp_path / "badconfig.json",
        "tmp": tmp_path,
    }
    result = run_cli(*[a.format(**values) for a in args], cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.safetensors"))


def test_generate_bad_inputs(tiny_run):
    assert_one_line_error(
        run_cli("generate", tiny_run, "--prompt", "Roë ☃"), "never saw", "'ë'", "'☃'", "--drop-unknown"
    )
    ok = run_cli("generate", tiny_run, "--prompt", "Roë ☃", "--drop-unknown", "--length", "5", "--seed", "1")
    assert ok.returncode == 0 and ok.stdout.startswith("Ro ")
    assert_one_line_error(run_cli("generate", tiny_run, "--temperature", "-1"), "temperature must be a non-negative")
    assert_one_line_error(run_cli("generate", tiny_run, "--top-p", "0"), "top_p must be a number in (0, 1]")
    assert_one_line_error(run_cli("generate", tiny_run, "--num-samples", "0"), "num_samples must be a positive integer")
    assert_one_line_error(run_cli("eval", tiny_run, "--text", "missing.txt"), "no such file")


def test_existing_run_is_not_overwritten(tiny_run, small_text):
    before = (tiny_run / "latest.safetensors").read_bytes()
    assert_one_line_error(run_cli("train", "--text", small_text, "--run", tiny_run), "already holds a run", "--resume")
    assert (tiny_run / "latest.safetensors").read_bytes() == before
