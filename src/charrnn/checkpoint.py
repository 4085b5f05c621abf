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
at any moment leaves a consistent checkpoint to resume from.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import ModelConfig, TrainConfig, from_dict
from .errors import CharRNNError
from .files import atomic_path, atomic_write_text
from .model import CharRNN
from .vocab import Vocab

CONFIG_FORMAT_VERSION = 1
WEIGHTS_FORMAT_VERSION = 1
TRAINER_STATE_FORMAT_VERSION = 1

CONFIG = "config.json"
VOCAB = "vocab.json"
LATEST = "latest.safetensors"
BEST = "best.safetensors"
TRAINER_STATE = "trainer_state.pt"
METRICS = "metrics.jsonl"
PLOT = "loss.png"
CHECKPOINTS = {"latest": LATEST, "best": BEST}


def is_run(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def save_config(run_dir: Path, model: ModelConfig, train: TrainConfig, corpus: dict[str, Any]) -> None:
    data = {
        "format_version": CONFIG_FORMAT_VERSION,
        "charrnn_version": __version__,
        "model": dataclasses.asdict(model),
        "train": dataclasses.asdict(train),
        "corpus": corpus,
    }
    atomic_write_text(Path(run_dir) / CONFIG, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def load_config(run_dir: Path) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """Read config.json: (model config, training config, corpus fingerprint)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise CharRNNError(f"{run_dir} is not a charrnn run (no {CONFIG}); train one with `charrnn train --run {run_dir}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CharRNNError(f"cannot read {path}: {exc}") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != CONFIG_FORMAT_VERSION:
        raise CharRNNError(f"{path}: config format version {version!r} is not supported (this charrnn reads {CONFIG_FORMAT_VERSION}); upgrade charrnn")
    unknown = sorted(set(data) - {"format_version", "charrnn_version", "model", "train", "corpus"})
    if unknown:
        raise CharRNNError(f"{path}: unknown key(s) {', '.join(unknown)}")
    model = from_dict(ModelConfig, data["model"], f"{path} model")
    train = from_dict(TrainConfig, data["train"], f"{path} train")
    return model, train, data.get("corpus", {})


def save_weights(path: Path, model: torch.nn.Module, **meta: Any) -> None:
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    metadata = {"format_version": str(WEIGHTS_FORMAT_VERSION), **{k: json.dumps(v) for k, v in meta.items()}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(path: Path, model: torch.nn.Module) -> None:
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CharRNNError(f"cannot read weights {path}: {exc}") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CharRNNError(f"{path} does not match the run's config.json: {first}") from None


def save_trainer_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format_version": TRAINER_STATE_FORMAT_VERSION, **state}, tmp)


def load_trainer_state(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise CharRNNError(f"{path.parent} has no {TRAINER_STATE} to resume from; it never finished a checkpoint")
    try:
        # weights_only=True: unpickling is restricted to tensors and plain containers, so a
        # tampered file cannot run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CharRNNError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if state.get("format_version") != TRAINER_STATE_FORMAT_VERSION:
        raise CharRNNError(f"{path}: trainer state version {state.get('format_version')!r} is not supported")
    return state


def checkpoint_path(run_dir: Path, checkpoint: str | None) -> Path:
    """`best` or `latest`; None means best when the run has one (it validates), else latest."""
    run_dir = Path(run_dir)
    if checkpoint is None:
        checkpoint = "best" if (run_dir / BEST).is_file() else "latest"
    if checkpoint not in CHECKPOINTS:
        raise CharRNNError(f"checkpoint must be 'best' or 'latest'; got {checkpoint!r}")
    path = run_dir / CHECKPOINTS[checkpoint]
    if not path.is_file():
        hint = " (the run has no validation split)" if checkpoint == "best" else ""
        raise CharRNNError(f"{run_dir} has no {checkpoint} checkpoint yet{hint}; use --checkpoint latest or train first")
    return path


def load_run(run_dir: Path, checkpoint: str | None = None, device: str | torch.device = "cpu"):
    """(model in eval mode, vocab, model config, train config, corpus info) from a run directory."""
    run_dir = Path(run_dir)
    model_config, train_config, corpus = load_config(run_dir)
    vocab = Vocab.load(run_dir / VOCAB)
    if len(vocab) != model_config.vocab_size:
        raise CharRNNError(f"{run_dir}: vocab.json has {len(vocab)} characters but config.json says {model_config.vocab_size}")
    model = CharRNN(model_config)
    load_weights(checkpoint_path(run_dir, checkpoint), model)
    return model.to(device).eval(), vocab, model_config, train_config, corpus


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash; the rest are fine
    return records
