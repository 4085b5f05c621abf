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
(formats.py): weight files and the trainer state carry a SHA-256 of their tensors, so flipped bytes
are an error that names the file, never a silently different model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from . import __version__
from . import formats
from .config import ModelConfig, TrainConfig, from_dict
from .errors import CharRNNError
from .files import LOCK_FILE, atomic_write_bytes, atomic_write_text, is_temporary
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


def holds_user_files(path: Path) -> bool:
    """Whether a folder has anything but what an interrupted `charrnn train` may have left (its lock and
    temporaries): such a folder is the user's, and charrnn never writes into it."""
    path = Path(path)
    return path.is_dir() and any(e.name != LOCK_FILE and not is_temporary(e.name) for e in path.iterdir())


def check_new_run_dir(run_dir: Path) -> None:
    """A new run may go into a missing or empty folder only."""
    run_dir = Path(run_dir)
    if is_run(run_dir):
        raise CharRNNError(f"{run_dir} already holds a run; resume it with `charrnn train --resume {run_dir}` or choose another --run")
    if run_dir.exists() and not run_dir.is_dir():
        raise CharRNNError(f"{run_dir} exists and is not a folder; choose another --run")
    if holds_user_files(run_dir):
        raise CharRNNError(f"{run_dir} is a folder with files in it that is not a charrnn run; charrnn never writes "
                           "into such a folder: choose a new or empty --run")


def save_config(run_dir: Path, model: ModelConfig, train: TrainConfig, corpus: dict[str, Any],
                started_from: dict[str, Any] | None = None) -> None:
    """`started_from`: where the weights came from when not a fresh initialisation (fine-tune, import)."""
    data = {
        "format_version": CONFIG_FORMAT_VERSION,
        "charrnn_version": __version__,
        "model": dataclasses.asdict(model),
        "train": dataclasses.asdict(train),
        "corpus": corpus,
    }
    if started_from is not None:
        data["started_from"] = started_from
    atomic_write_text(Path(run_dir) / CONFIG, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def load_config(run_dir: Path) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """Read config.json: (model config, training config, corpus fingerprint)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise CharRNNError(f"{run_dir} is not a charrnn run (no {CONFIG}); train one with `charrnn train --run {run_dir}`")
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


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_weights(path: Path, model: torch.nn.Module, **meta: Any) -> None:
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    metadata = {"format_version": str(WEIGHTS_FORMAT_VERSION), "tensors_sha256": tensors_sha256(tensors),
                **{k: json.dumps(v) for k, v in meta.items()}}
    # Serialised in memory, then written by Python: a full disk is then an OSError with its errno, which
    # the caller can name, instead of whatever the library's writer reports.
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))


def load_weights(path: Path, model: torch.nn.Module) -> None:
    fix = "use the other checkpoint (--checkpoint best|latest), resume training, or retrain"
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except FileNotFoundError:
        raise CharRNNError(f"{path} is missing; {fix}") from None
    except (OSError, SafetensorError, RuntimeError, ValueError) as exc:
        raise CharRNNError(f"{path} is damaged ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); {fix}") from None
    recorded = metadata.get("tensors_sha256")
    if recorded is not None and recorded != tensors_sha256(tensors):
        raise CharRNNError(f"{path} is damaged (its tensors do not match the SHA-256 recorded when it was written); {fix}")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CharRNNError(f"{path} does not match the run's config.json: {first}") from None


def save_trainer_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format_version": TRAINER_STATE_FORMAT_VERSION, "model_sha256": tensors_sha256(state["model"]), **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_trainer_state(path: Path, model: CharRNN | None = None, optimizer_order: list[str] | None = None) -> dict[str, Any]:
    """The resumable state, checked: plain fields by schema, weights against `model` (when given) and
    their SHA-256, Adam's moments against the weights' shapes. `optimizer_order`: the parameter names in
    the optimizer's order (regularize.parameter_order; default the model's own order)."""
    path = Path(path)
    fix = (f"delete {path.name} to restart this run from step 0 (charrnn train --resume {path.parent}), "
           "or restore it from a backup")
    if not path.is_file():
        raise CharRNNError(f"{path.parent} has no {TRAINER_STATE} to resume from; it never finished a checkpoint")
    try:
        # weights_only=True: unpickling is restricted to tensors and plain containers, so a
        # tampered file cannot run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CharRNNError(f"{path} is damaged ({first}); {fix}") from None
    if not isinstance(state, dict):
        raise CharRNNError(f"{path} is damaged (it holds a {type(state).__name__}, not a trainer state); {fix}")
    info = formats.parse(formats.TrainerStateInfo, state, path, fix)
    weights = info.model
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise CharRNNError(f"{path} is damaged (its weights are not a name -> tensor mapping); {fix}")
    if info.model_sha256 is not None and info.model_sha256 != tensors_sha256(weights):
        raise CharRNNError(f"{path} is damaged (its weights do not match the SHA-256 recorded when it was written); {fix}")
    if not isinstance(info.rng, torch.Tensor) or info.rng.dtype != torch.uint8 or info.rng.shape != torch.get_rng_state().shape:
        raise CharRNNError(f"{path} is damaged (its random-number state is not a generator state); {fix}")
    if model is not None:
        expected = model.state_dict()
        wrong = sorted(set(expected) ^ set(weights)) or [
            k for k in expected if weights[k].shape != expected[k].shape or weights[k].dtype != expected[k].dtype]
        if wrong:
            raise CharRNNError(f"{path} does not fit the model in config.json (tensor {wrong[0]}); {fix}")
        _check_optimizer(info.optimizer, [expected[k] for k in (optimizer_order or expected)], path, fix)
    return state


def carried_state(state: dict[str, Any], model: CharRNN, batch_size: int) -> torch.Tensor:
    """The stateful trainer's carried recurrent state, checked against the model and batch size."""
    carried = state.get("carried")
    expected = tuple(model.initial_state(batch_size, "cpu").shape)
    if not isinstance(carried, torch.Tensor) or tuple(carried.shape) != expected or carried.dtype != torch.float32:
        raise ValueError(f"its carried recurrent state is not a float32 tensor of shape {list(expected)}")
    return carried


def _check_optimizer(optimizer: dict[str, Any], params: list[torch.Tensor], path: Path, fix: str) -> None:
    """Adam's state: one group over every parameter, moments shaped like them."""
    groups, moments = optimizer.get("param_groups"), optimizer.get("state")
    try:
        indices = [i for group in groups for i in group["params"]]
        ok = sorted(indices) == list(range(len(params))) and isinstance(moments, dict)
        for index, entry in (moments or {}).items():
            for key in ("exp_avg", "exp_avg_sq"):
                ok = ok and isinstance(entry[key], torch.Tensor) and entry[key].shape == params[index].shape
    except (TypeError, KeyError, IndexError, AttributeError):
        ok = False
    if not ok:
        raise CharRNNError(f"{path} is damaged (its optimizer state does not fit the model); {fix}")


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
            raise CharRNNError(f"{run_dir} has no best checkpoint (the run has no validation split); use --checkpoint latest")
        raise CharRNNError(f"{run_dir} has no checkpoint yet; train it first (charrnn train --resume {run_dir})")
    return path


def load_run(run_dir: Path, checkpoint: str | None = None, device: str | torch.device = "cpu"):
    """(model in eval mode, vocab, model config, train config, corpus info) from a run directory."""
    run_dir = Path(run_dir)
    model_config, train_config, corpus = load_config(run_dir)
    vocab = Vocab.load(run_dir / VOCAB, "restore it from a backup, or retrain")
    if len(vocab) != model_config.vocab_size:
        raise CharRNNError(f"{run_dir}/{VOCAB} has {len(vocab)} characters but config.json says {model_config.vocab_size}; "
                           "restore the run's own vocab.json")
    model = CharRNN(model_config)
    load_weights(checkpoint_path(run_dir, checkpoint), model)
    return model.to(device).eval(), vocab, model_config, train_config, corpus


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
