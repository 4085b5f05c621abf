"""TensorBoard event files: read back with tensorboard's own reader, they hold exactly what
metrics.jsonl holds, also after a crash and a resume (no step twice)."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charrnn import Callback, CharRNNError, TrainConfig, Trainer
from charrnn.training.log import TAGS
from conftest import TINY

QUIET = dict(out=open(os.devnull, "w"))


def config(small_text, **kw) -> TrainConfig:
    return TrainConfig(
        **{
            **dict(text=str(small_text), epochs=2, batch_size=16, seq_len=40, seed=5, log_every=3, checkpoint_every=10),
            **kw,
        }
    )


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def expected(run) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as TensorBoard scalars (which are float32)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    wanted: dict[str, list[tuple[int, float]]] = {}
    for (kind, field), tag in TAGS.items():
        points = [
            (r["step"], float(np.float32(r[field]))) for r in records if r["kind"] == kind and r.get(field) is not None
        ]
        if points:
            wanted[tag] = points
    return wanted


def test_event_files_hold_what_metrics_jsonl_holds(small_text, tmp_path):
    Trainer.create(tmp_path / "run", config(small_text), TINY, **QUIET).fit()
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
    got = scalars(tmp_path / "run")
    assert set(got) == {
        "loss/train",
        "learning_rate",
        "loss/train_epoch",
        "loss/val",
        "bits_per_char/val",
        "time/ms_per_step",
    }
    assert got == expected(tmp_path / "run")
    assert [step for step, _ in got["loss/val"]] == [step for step, _ in got["loss/train_epoch"]] and len(
        got["loss/val"]
    ) == 2


class CrashAt(Callback):
    """An exception mid-epoch, after some steps were logged but before the next checkpoint: a crash."""

    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, loss):
        if trainer.global_step == self.step:
            raise RuntimeError("crash")


def test_resume_after_a_crash_appends_without_repeating_steps(small_text, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        Trainer.create(run, config(small_text), TINY, callbacks=[CrashAt(17)], **QUIET).fit()
    assert [s for s, _ in scalars(run)["loss/train"]][-2:] == [12, 15]  # logged past the checkpoint at step 10
    resumed = Trainer.resume(run, **QUIET)
    assert resumed.global_step == 10
    assert resumed.fit().status == "finished"
    got = scalars(run)
    assert got == expected(run)  # steps 12 and 15 of the crashed run are gone, their redone values are there
    steps = [s for s, _ in got["loss/train"]]
    assert steps == sorted(set(steps)) and steps[:5] == [3, 6, 9, 12, 15]

    # And the same numbers as a run that never stopped (training is deterministic; timings are not).
    Trainer.create(tmp_path / "whole", config(small_text), TINY, **QUIET).fit()
    whole = scalars(tmp_path / "whole")
    for tag in ("loss/train", "learning_rate", "loss/val", "bits_per_char/val"):
        assert got[tag] == whole[tag], tag


def test_off_writes_no_event_file_and_on_without_the_package_says_how(small_text, tmp_path, monkeypatch):
    Trainer.create(tmp_path / "off", config(small_text, max_steps=4, tensorboard="off"), TINY, **QUIET).fit()
    assert not list((tmp_path / "off").glob("events.*"))
    with pytest.raises(CharRNNError, match="tensorboard must be one of auto, on, off"):
        config(small_text, tensorboard="yes")
    import charrnn.training.log

    monkeypatch.setattr(charrnn.training.log, "installed", lambda: False)
    with pytest.raises(CharRNNError, match=r"pip install 'charrnn\[tensorboard\]', or train with --tensorboard off"):
        Trainer.create(tmp_path / "on", config(small_text, tensorboard="on"), TINY, **QUIET)
    assert not (tmp_path / "on").exists()  # nothing written
    Trainer.create(tmp_path / "auto", config(small_text, max_steps=4), TINY, **QUIET).fit()
    assert not list((tmp_path / "auto").glob("events.*"))  # auto: off without the package


def test_the_flag(small_text, tmp_path):
    from conftest import run_cli

    flags = ["--text", small_text, "--hidden", "16", "--embedding", "8", "--batch-size", "16", "--seq-len", "40"]
    result = run_cli(
        "train", *flags, "--run", tmp_path / "r", "--max-steps", "2", "--log-every", "1", "--tensorboard", "off"
    )
    assert result.returncode == 0, result.stderr
    assert not list((tmp_path / "r").glob("events.*"))
    # Housekeeping, so it may change on resume; the event files then hold what was logged from there on.
    result = run_cli("train", "--resume", tmp_path / "r", "--max-steps", "4", "--tensorboard", "on")
    assert result.returncode == 0, result.stderr
    assert [s for s, _ in scalars(tmp_path / "r")["loss/train"]] == [3, 4]
    assert [s for s, _ in expected(tmp_path / "r")["loss/train"]] == [1, 2, 3, 4]
