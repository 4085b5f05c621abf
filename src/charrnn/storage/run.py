"""The run directory: everything generation and resumption need, and nothing that runs code on load.

    config.json         model + training settings, corpus fingerprint, format version
    vocab.json          the characters, in id order
    latest.safetensors  weights after the most recent epoch (or step checkpoint)
    best.safetensors    weights with the lowest validation loss so far
    trainer_state.pt    weights, optimizer moments, position and RNG states, for --resume
                        (plain tensors and numbers, read with torch.load(weights_only=True))
    metrics.jsonl       one JSON line every few steps and one per epoch
    loss.png            train and validation loss against steps

Every file is written atomically, and trainer_state.pt carries its own copy of the weights, so a crash
at any moment leaves a consistent checkpoint to resume from. Every file is checked when read
(storage/formats.py): weight files and the trainer state carry a SHA-256 of their tensors, so flipped bytes
are an error that names the file, never a silently different model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from charrnn import __version__
from charrnn.config import ModelConfig, TrainConfig, from_dict
from charrnn.errors import CharRNNError
from charrnn.storage import files, formats
from charrnn.storage.files import LOCK_FILE, atomic_write_text, is_own_lock, is_own_temporary

CONFIG_FORMAT_VERSION = 3  # 2: records vocab_sha256; 3: may record a plan (formats.ConfigFile)


CONFIG = "config.json"


VOCAB = "vocab.json"


LATEST = "latest.safetensors"


BEST = "best.safetensors"


TRAINER_STATE = "trainer_state.pt"


METRICS = "metrics.jsonl"


PLOT = "loss.png"


CHECKPOINTS = {"latest": LATEST, "best": BEST}


# Every file charrnn writes (atomically) in a run folder: only their temporaries are ever removed.
RUN_FILES = frozenset({CONFIG, VOCAB, LATEST, BEST, TRAINER_STATE, METRICS, PLOT})


METRICS_FORMAT_VERSION = 1  # each metrics.jsonl line carries it; lines without it are version 1


def is_run(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def holds_user_files(path: Path) -> bool:
    """Whether a folder has anything but what an interrupted `charrnn train` may have left (its lock and
    the temporaries of the run's files): such a folder is the user's, and charrnn never writes into it."""
    path = Path(path)
    return path.is_dir() and not all(
        is_own_lock(e) if e.name == LOCK_FILE else is_own_temporary(e, RUN_FILES) for e in path.iterdir()
    )


def remove_temporaries(run_dir: Path) -> int:
    """Delete the temporaries of the run's files left by killed writers; call only holding the run's lock."""
    return files.remove_stale_temporaries(run_dir, RUN_FILES)


def check_new_run_dir(run_dir: Path) -> None:
    """A new run may go into a missing or empty folder only."""
    run_dir = Path(run_dir)
    if is_run(run_dir):
        raise CharRNNError(
            f"{run_dir} already holds a run; resume it with `charrnn train --resume {run_dir}` or choose another --run"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise CharRNNError(f"{run_dir} exists and is not a folder; choose another --run")
    if holds_user_files(run_dir):
        raise CharRNNError(
            f"{run_dir} is a folder with files in it that is not a charrnn run; charrnn never writes "
            "into such a folder: choose a new or empty --run"
        )


def save_config(
    run_dir: Path,
    model: ModelConfig,
    train: TrainConfig,
    corpus: dict[str, Any],
    started_from: dict[str, Any] | None = None,
    plan: dict[str, Any] | None = None,
) -> None:
    """`started_from`: where the weights came from when not a fresh initialisation (fine-tune, import);
    `plan`: what `--preset auto` measured and chose.
    The run's vocab.json must be written first: config.json records its SHA-256, and it is what marks
    the run complete (is_run)."""
    vocab = formats.load(formats.VocabFile, Path(run_dir) / VOCAB, "write the vocabulary before config.json")
    data = {
        "format_version": CONFIG_FORMAT_VERSION,
        "charrnn_version": __version__,
        "model": dataclasses.asdict(model),
        "train": dataclasses.asdict(train),
        "corpus": corpus,
        "vocab_sha256": formats.vocab_sha256(vocab.chars),
    }
    if started_from is not None:
        data["started_from"] = started_from
    if plan is not None:
        data["plan"] = plan
    atomic_write_text(Path(run_dir) / CONFIG, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def update_train_config(run_dir: Path, train: TrainConfig) -> None:
    """Replace config.json's training settings, keeping the rest of the file as it is."""
    path = Path(run_dir) / CONFIG
    data = formats.load(formats.ConfigFile, path, "restore it from a backup").model_dump(exclude_none=True)
    data["train"] = dataclasses.asdict(train)
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def load_config(run_dir: Path) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """Read config.json: (model config, training config, corpus fingerprint)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise CharRNNError(
            f"{run_dir} is not a charrnn run (no {CONFIG}); train one with `charrnn train --run {run_dir}`"
        )
    fix = "restore it from a backup, or train a new run"
    data = formats.load(formats.ConfigFile, path, fix)
    try:
        model = from_dict(ModelConfig, data.model, "model")
        train = from_dict(TrainConfig, data.train, "train")
    except CharRNNError as exc:
        raise CharRNNError(f"{path} is damaged ({exc}); {fix}") from None
    return model, train, data.corpus.model_dump()


def load_started_from(run_dir: Path) -> dict[str, Any] | None:
    """config.json's record of where the run's weights started (None: a fresh initialisation)."""
    return formats.load(formats.ConfigFile, Path(run_dir) / CONFIG, "restore it from a backup").started_from


def load_plan(run_dir: Path) -> dict[str, Any] | None:
    """config.json's record of the plan that chose the run's settings (None: no plan)."""
    return formats.load(formats.ConfigFile, Path(run_dir) / CONFIG, "restore it from a backup").plan


def load_vocab_sha256(run_dir: Path) -> str | None:
    """The SHA-256 config.json records of the run's vocabulary (None: a run written before it was recorded)."""
    return formats.load(formats.ConfigFile, Path(run_dir) / CONFIG, "restore it from a backup").vocab_sha256


def checkpoint_path(run_dir: Path, checkpoint: str | None) -> Path:
    """`best` or `latest`; None means best when the run has one (it validates), else latest."""
    run_dir = Path(run_dir)
    if checkpoint is None:
        checkpoint = "best" if (run_dir / BEST).is_file() else "latest"
    if checkpoint not in CHECKPOINTS:
        raise CharRNNError(f"checkpoint must be 'best' or 'latest'; got {checkpoint!r}")
    path = run_dir / CHECKPOINTS[checkpoint]
    if not path.is_file():
        if checkpoint == "best" and (run_dir / LATEST).is_file():
            raise CharRNNError(
                f"{run_dir} has no best checkpoint (the run has no validation split); use --checkpoint latest"
            )
        raise CharRNNError(f"{run_dir} has no checkpoint yet; train it first (charrnn train --resume {run_dir})")
    return path


MAX_RECORD_BYTES = 1 << 16  # a metrics.jsonl line is under 1 kB; a longer one is not charrnn's


def epoch_record(run_dir: Path, step: int) -> dict[str, Any] | None:
    """The last epoch record of metrics.jsonl at or before `step`: the epoch whose end the weights saved at
    `step` are from. Read a line at a time, as the file can reach tens of MB; lines too long to be a record
    are skipped."""
    path = Path(run_dir) / METRICS
    found, skipping = None, False
    try:
        with path.open("rb") as lines:
            while line := lines.readline(MAX_RECORD_BYTES):
                whole = line.endswith(b"\n")
                if skipping or (not whole and len(line) == MAX_RECORD_BYTES):
                    skipping = not whole
                    continue
                record = _record(line)
                if record and record.get("kind") == "epoch" and _before(record.get("step"), step):
                    found = record
    except FileNotFoundError:
        return None
    return found


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None  # a line cut short by a crash
    return record if isinstance(record, dict) else None


def _before(recorded: Any, step: int) -> bool:
    return isinstance(recorded, int) and not isinstance(recorded, bool) and recorded <= step


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash; the rest are fine
        if isinstance(record, dict):
            records.append(record)
    return records


def load_metrics(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """metrics.jsonl checked line by line, for the trainer that rewrites it: (line, record) pairs. The last
    line, when it lacks its newline, was cut short by a kill or a full disk and is dropped; any other damaged
    line is an error naming it. The file is read only if it is the run's own, not a link to another."""
    path = Path(run_dir) / METRICS
    fix = f"delete that line (or all of {METRICS}: it only records the run's history), then resume"
    try:
        with open(files.open_regular(path, os.O_RDONLY), "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CharRNNError(f"cannot read {path}: {exc.strerror or exc}; fix its permissions, then resume") from None
    pairs = []
    for number, raw in enumerate(data.split(b"\n")[:-1], 1):  # what follows the last newline is a cut line
        where = f"{path} line {number}"
        try:
            line = raw.decode("utf-8").strip()
            record = json.loads(line) if line else None
        except ValueError:
            raise CharRNNError(f"{where} is damaged (not JSON); {fix}") from None
        if record is not None:
            formats.metrics_record(record, where, fix)
            pairs.append((line, record))
    return pairs
