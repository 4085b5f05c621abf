"""A run folder facing a careless or hostile user: links and hard links where charrnn writes in place, files
named like charrnn's temporaries, a damaged or linked metrics.jsonl, a kill between an epoch's metrics line
and its checkpoint, --max-steps below the run's step, and the signals that end a session (SIGHUP, Ctrl-C
on --nproc 2).

Most runs go through the CLI in this process (`cli.main`), which catches only CharRNNError: any other
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

from charrnn import cli
from charrnn.errors import CharRNNError
from charrnn.storage import files
from conftest import run_cli
from helpers import assert_one_line_error

T = ["--hidden", "16", "--embedding", "8", "--max-steps", "2", "--batch-size", "8", "--seq-len", "20"]
CHECKPOINTS = ("latest.safetensors", "best.safetensors", "trainer_state.pt", "config.json", "metrics.jsonl")


def main(capsys, *args) -> tuple[int, str]:
    """`charrnn ARGS` in this process: (exit code, stderr's last non-empty line)."""
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    return code, lines[-1] if lines else ""


@pytest.fixture(scope="module")
def trained(small_text, tmp_path_factory) -> Path:
    """A run stopped by --max-steps 2, with a metrics line per step."""
    run = tmp_path_factory.mktemp("trained") / "r1"
    assert cli.main(["train", "--text", str(small_text), "--run", str(run), *T, "--log-every", "1"]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run that a test may damage."""
    return Path(shutil.copytree(trained, tmp_path / "r1"))


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    return {name: ((run / name).read_bytes(), (run / name).stat().st_mtime_ns) for name in CHECKPOINTS}


# -- 1. never through a link, never a file charrnn did not write ----------------------------------------------
def test_a_lock_link_is_refused_and_its_target_kept(run, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / ".lock").unlink()
    (run / ".lock").symlink_to(victim)
    before = snapshot(run)
    result = run_cli("train", "--resume", run, "--max-steps", "3")
    assert_one_line_error(result, f"{run / '.lock'} is a symbolic link", "remove it")
    assert victim.read_text() == "precious\n" and snapshot(run) == before


def test_a_new_run_folder_holding_only_a_lock_link_is_a_users_folder(small_text, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / ".lock").symlink_to(victim)
    code, line = main(capsys, "train", "--text", small_text, "--run", folder, *T)
    assert code == 2 and "not a charrnn run" in line, line
    assert victim.read_text() == "precious\n" and os.listdir(folder) == [".lock"]


@pytest.mark.parametrize("how", ["hard link", "someone else's text"])
def test_a_lock_charrnn_did_not_write_is_never_truncated(how, run, tmp_path, capsys):
    (run / ".lock").unlink()
    if how == "hard link":
        other = tmp_path / "other.txt"
        other.write_text("precious\n")
        os.link(other, run / ".lock")
        expected = "hard link"
    else:
        (run / ".lock").write_text("precious\n")
        expected = "not charrnn's lock"
    code, line = main(capsys, "train", "--resume", run, "--max-steps", "3")
    assert code == 2 and expected in line and str(run / ".lock") in line, line
    assert (run / ".lock").read_text() == "precious\n"


def test_appending_never_goes_through_a_link(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("precious\n")
    (tmp_path / "linked").symlink_to(target)
    os.link(target, tmp_path / "hard")
    for name in ("linked", "hard"):
        with pytest.raises(CharRNNError, match=name):
            files.append_text(tmp_path / name, "x\n")
    assert target.read_text() == "precious\n"
    files.append_text(tmp_path / "new.txt", "a\n")
    files.append_text(tmp_path / "new.txt", "b\n")
    assert (tmp_path / "new.txt").read_text() == "a\nb\n"


def test_a_linked_metrics_file_is_refused(run, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text((run / "metrics.jsonl").read_text())
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(elsewhere)
    code, line = main(capsys, "train", "--resume", run, "--max-steps", "3")
    assert code == 2 and "metrics.jsonl is a symbolic link" in line, line
    assert (run / "metrics.jsonl").is_symlink() and elsewhere.read_text() == (run / "metrics.jsonl").read_text()


# -- 2. only charrnn's own temporaries are removed ---------------------------------------------------------
def test_a_users_file_named_like_a_temporary_is_kept(small_text, run, tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / ".notes.123.abcdef12.tmp").write_text("mine\n")
    code, line = main(capsys, "train", "--text", small_text, "--run", folder, *T)
    assert code == 2 and "not a charrnn run" in line, line
    assert (folder / ".notes.123.abcdef12.tmp").read_text() == "mine\n"
    (run / ".notes.123.abcdef12.tmp").write_text("mine\n")
    assert main(capsys, "train", "--resume", run, "--max-steps", "3")[0] == 0
    assert (run / ".notes.123.abcdef12.tmp").read_text() == "mine\n"


def test_only_stale_temporaries_of_charrnn_s_own_files_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # A live process whose command line names charrnn: a writer, whose temporary is in use.
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "charrnn"])
    try:
        names = {
            f".config.json.{dead.pid}.0123abcd.tmp": False,  # left by a killed writer
            f".config.json.{os.getpid()}.0123abcd.tmp": False,  # ours: nothing of ours is being written now
            f".config.json.{writer.pid}.0123abcd.tmp": True,  # a writer at work
            f".notes.txt.{dead.pid}.0123abcd.tmp": True,  # not a file charrnn writes here
        }
        for name in names:
            (tmp_path / name).write_text("x")
        (tmp_path / f".vocab.json.{dead.pid}.0123abcd.tmp").symlink_to(tmp_path / "elsewhere")
        (tmp_path / f".latest.safetensors.{dead.pid}.0123abcd.tmp").mkdir()
        removed = files.remove_stale_temporaries(tmp_path, {"config.json", "vocab.json", "latest.safetensors"})
        assert removed == 2
        left = set(os.listdir(tmp_path))
        assert {name for name, kept in names.items() if kept} <= left
        assert not {name for name, kept in names.items() if not kept} & left
        assert f".vocab.json.{dead.pid}.0123abcd.tmp" in left and f".latest.safetensors.{dead.pid}.0123abcd.tmp" in left
    finally:
        writer.kill()
        writer.wait()


# -- 8. metrics.jsonl is checked like every other file -------------------------------------------------------
@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"kind": "step", "step": 1, "epoch": 1}', "loss"),
        ('{"kind": "step", "step": 1, "epoch": 1, "loss": "low"}', "loss"),
        ('{"kind": "step", "step": true, "epoch": 1, "loss": 1.0}', "step"),
        ('{"kind": "note", "step": 1}', "kind"),
        ("not json", "not JSON"),
        ('{"kind": "step", "step": 1, "epoch": 1, "loss": 1.0, "format_version": 2}', "format version 2"),
    ],
)
def test_a_damaged_metrics_line_is_one_line(line, problem, run, capsys):
    kept = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(line + "\n" + kept)
    before = snapshot(run)
    code, message = main(capsys, "train", "--resume", run, "--max-steps", "3")
    assert code == 2 and f"{run / 'metrics.jsonl'} line 1" in message and problem in message, message
    assert snapshot(run) == before


def test_a_metrics_line_cut_short_by_a_kill_is_dropped(run, capsys):
    lines = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(lines + '{"kind": "step", "ep')  # no newline: the append was cut
    assert main(capsys, "train", "--resume", run, "--max-steps", "3")[0] == 0
    kept = records(run)
    assert [r["step"] for r in kept if r["kind"] == "step"] == [1, 2, 3]


def test_runs_whose_metrics_have_no_format_version_still_resume(run, capsys):
    lines = [{k: v for k, v in r.items() if k != "format_version"} for r in records(run)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(capsys, "train", "--resume", run, "--max-steps", "3")[0] == 0
    assert [r.get("format_version") for r in records(run)][-1] == 1


# -- 13. a kill between an epoch's metrics line and its checkpoint ------------------------------------------
class Killed(BaseException):
    """Stands for kill -9: nothing after it runs."""


def test_a_kill_before_the_epochs_checkpoint_leaves_one_line_per_epoch(small_text, tmp_path, monkeypatch):
    from charrnn import TrainConfig, Trainer

    run = tmp_path / "run"
    config = TrainConfig(text=str(small_text), epochs=1, batch_size=8, seq_len=20, checkpoint_every=1, log_every=1)
    save = Trainer.save_checkpoint

    def killed_at_the_epochs_end(trainer):
        if trainer.epoch == 1:  # the epoch's line is written, its checkpoint not yet
            raise Killed
        save(trainer)

    monkeypatch.setattr(Trainer, "save_checkpoint", killed_at_the_epochs_end)
    with pytest.raises(Killed):
        Trainer.create(run, config, dict(hidden_size=16, embedding_size=8), out=open(os.devnull, "w")).fit()
    monkeypatch.undo()
    last = records(run)[-1]
    assert last["kind"] == "epoch"
    with (run / "metrics.jsonl").open("a") as metrics:  # and a line past the checkpoint
        metrics.write(json.dumps({"kind": "step", "epoch": 2, "step": last["step"] + 5, "loss": 1.0}) + "\n")
    Trainer.resume(run, out=open(os.devnull, "w")).fit()
    kept = records(run)
    assert [r["epoch"] for r in kept if r["kind"] == "epoch"] == [1]
    steps = [r["step"] for r in kept if r["kind"] == "step"]
    assert steps == list(range(1, last["step"] + 1))


# -- 14. --max-steps below the run's step -------------------------------------------------------------------
def test_resume_below_the_runs_step_says_so_and_writes_nothing(run, capsys):
    before = snapshot(run)
    time.sleep(0.01)  # a rewrite would show in the mtimes
    for steps in ("1", "2"):
        code = cli.main(["train", "--resume", str(run), "--max-steps", steps])
        err = capsys.readouterr().err
        assert code == 0 and f"already at step 2 (--max-steps {steps})" in err, err
    assert snapshot(run) == before
    assert cli.main(["train", "--resume", str(run)]) == 0  # --max-steps 1 was not kept
    assert "already at step 2 (--max-steps 2)" in capsys.readouterr().err


# -- 11, 12. the signals that end a session ----------------------------------------------------------------
def _train(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "charrnn", "train", *map(str, args)], text=True, **kwargs)


def _wait_for(predicate, proc, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None and time.time() < deadline, "the run never reached the expected point"
        time.sleep(0.05)


LONG = ["--hidden", "16", "--embedding", "8", "--batch-size", "8", "--seq-len", "20", "--epochs", "200"]


def test_sighup_saves_and_exits_129(small_text, tmp_path):
    run = tmp_path / "hup"
    proc = _train("--text", small_text, "--run", run, *LONG, "--log-every", "1", stderr=subprocess.PIPE)
    _wait_for(lambda: (run / "metrics.jsonl").exists(), proc)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 129, stderr
    assert "SIGHUP: stopping after this step" in stderr and f"charrnn train --resume {run}" in stderr
    assert "Traceback" not in stderr and (run / "trainer_state.pt").exists()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_closing_the_terminal_saves_a_checkpoint(small_text, tmp_path):
    import fcntl
    import termios

    master, slave = os.openpty()
    run = tmp_path / "tty"

    def controlling_terminal():  # the terminal is the run's own, as in a shell's window
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = _train(
        "--text", small_text, "--run", run, *LONG, "--log-every", "1",
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=controlling_terminal,
    )  # fmt: skip
    os.close(slave)
    os.set_blocking(master, False)

    def started() -> bool:
        try:  # read what it writes, so it never waits on a full terminal
            while os.read(master, 1 << 16):
                pass
        except OSError:
            pass
        return (run / "metrics.jsonl").exists()

    try:
        _wait_for(started, proc)
    finally:
        os.close(master)  # the window closes: the kernel hangs the terminal up and sends SIGHUP
    assert proc.wait(timeout=120) == 129
    assert (run / "trainer_state.pt").exists()


def _ranks(launcher: int) -> list[int]:
    children = Path(f"/proc/{launcher}/task/{launcher}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the ranks through /proc")
def test_signals_to_nproc_2_exit_as_one_process_would(small_text, tmp_path):
    run = tmp_path / "ddp"
    proc = _train("--text", small_text, "--run", run, *LONG, "--nproc", "2", stderr=subprocess.PIPE)
    _wait_for(lambda: (run / "metrics.jsonl").exists() and len(_ranks(proc.pid)) == 2, proc)
    for rank in _ranks(proc.pid):  # as a scheduler that signals every process of the job
        os.kill(rank, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "training failed" not in stderr and f"charrnn train --resume {run}" in stderr
    saved = (run / "trainer_state.pt").stat().st_mtime_ns
    logged = (run / "metrics.jsonl").stat().st_size
    proc = _train("--resume", run, "--nproc", "2", stderr=subprocess.PIPE)
    _wait_for(lambda: (run / "metrics.jsonl").stat().st_size > logged, proc)  # training again
    proc.send_signal(signal.SIGTERM)  # to the launcher, which passes it on
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "training failed" not in stderr and f"charrnn train --resume {run}" in stderr
    assert (run / "trainer_state.pt").stat().st_mtime_ns > saved
