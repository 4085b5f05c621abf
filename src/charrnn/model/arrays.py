"""A run folder read into numpy arrays, every file checked: the one reader of runs, with PyTorch or without.

Why numpy: generation on the step kernels needs no PyTorch, whose import is most of a short
`charrnn generate`'s time. weights.load_run builds the network from these same checked arrays, so a
damaged file is the same one line on either path.

Weight files carry a SHA-256 of their tensors, so flipped bytes are an error that names the file, never a
silently different model; NaN or infinite weights (a diverged training, which hashes fine) are refused
too, as are tensors that do not fit config.json's model, and a vocab.json that is not the run's own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.model import memory
from charrnn.storage.run import CONFIG, VOCAB, checkpoint_path, load_config, load_vocab_sha256

WEIGHTS_FIX = "use the other checkpoint (--checkpoint best|latest), resume training, or retrain"


@dataclass(frozen=True)
class RunArrays:
    """A run's weights (state_dict names -> float32 arrays) and everything read with them."""

    arrays: dict[str, np.ndarray]
    vocab: Vocab
    model_config: ModelConfig
    train_config: TrainConfig
    corpus: dict[str, Any]
    checkpoint: dict[str, Any]  # the weight file read: {"file": its name, "epoch", "step"} (what it records)


def sha256_of(entries: Iterable[tuple[str, str, tuple[int, ...], np.ndarray]]) -> str:
    """SHA-256 over (name, dtype name, shape, bytes as uint8) entries, in name order: the digest weight
    files and the trainer state record (weights.tensors_sha256 hashes tensors through it)."""
    digest = hashlib.sha256()
    for name, dtype, shape, data in sorted(entries, key=lambda entry: entry[0]):
        digest.update(f"{name}:{dtype}:{tuple(shape)};".encode())
        digest.update(data)
    return digest.hexdigest()


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """tensors_sha256 of the same values as numpy arrays. The digest names dtypes as PyTorch does
    ("torch.float32"), which is numpy's name after "torch." for every dtype a weight file holds."""
    return sha256_of(
        (name, f"torch.{a.dtype.name}", a.shape, np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        for name, a in arrays.items()
    )


def read_weights(path: Path, config: ModelConfig) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The weights at `path`, checked against their SHA-256, for NaN and infinity, and against `config`'s
    model; and where they are in their training (`position`)."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except FileNotFoundError:
        raise CharRNNError(f"{path} is missing; {WEIGHTS_FIX}") from None
    except (OSError, SafetensorError, RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CharRNNError(f"{path} is damaged ({first}); {WEIGHTS_FIX}") from None
    recorded = metadata.get("tensors_sha256")
    if recorded is not None and recorded != arrays_sha256(arrays):
        raise CharRNNError(
            f"{path} is damaged (its tensors do not match the SHA-256 recorded when it was written); {WEIGHTS_FIX}"
        )
    check_finite(arrays, path)
    check_fits(arrays, config, path)
    return arrays, position(metadata)


def check_finite(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Refuse NaN or infinite weights: such a model loads and runs, but writes one character forever.
    A diverged training writes them with a valid SHA-256, so the hash cannot catch them."""
    for name in sorted(arrays):
        values = arrays[name]
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise CharRNNError(
                f"{path}: tensor {name} holds NaN or infinite values (the training diverged, or the file is "
                f"damaged); {WEIGHTS_FIX}"
            )


def check_fits(arrays: dict[str, np.ndarray], config: ModelConfig, path: Path) -> None:
    """Every tensor of `config`'s model, float32 and of its shape, and no other."""
    expected = memory.tensor_shapes(config)
    problem = None
    if missing := sorted(set(expected) - set(arrays)):
        problem = f"it has no tensor {missing[0]}"
    elif unexpected := sorted(set(arrays) - set(expected)):
        problem = f"its tensor {unexpected[0]} is not in the model"
    else:
        for name, shape in expected.items():
            found = arrays[name]
            if found.shape != shape or found.dtype != np.float32:
                problem = f"tensor {name} is {found.dtype} {list(found.shape)}, the model's is float32 {list(shape)}"
                break
    if problem:
        raise CharRNNError(f"{path} does not match the run's config.json: {problem}")


def position(metadata: dict[str, str]) -> dict[str, int]:
    """The epoch and step a weight file records (save_weights's JSON values); what it does not record, or
    records as something else than a whole number, is left out."""
    found = {}
    for key in ("epoch", "step"):
        try:
            value = json.loads(metadata.get(key, "null"))
        except ValueError:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            found[key] = value
    return found


def load_run(run_dir: Path, checkpoint: str | None = None) -> RunArrays:
    """A run folder's config, vocabulary and weights (checkpoint 'best', 'latest', or None: best if the
    run has one), each checked."""
    run_dir = Path(run_dir)
    model_config, train_config, corpus = load_config(run_dir)
    # Checked before anything is read: config.json's model may be larger than this machine.
    memory.check(
        memory.parameter_count(model_config) * memory.FLOAT_BYTES,
        f"the model of {run_dir / CONFIG}, {memory.describe(model_config)},",
        "load it on a machine with more memory, or train a smaller one",
    )
    vocab = Vocab.load(run_dir / VOCAB, "restore it from a backup, or retrain")
    if len(vocab) != model_config.vocab_size:
        raise CharRNNError(
            f"{run_dir}/{VOCAB} has {len(vocab)} characters but config.json says {model_config.vocab_size}; "
            "restore the run's own vocab.json"
        )
    vocab.check_sha256(load_vocab_sha256(run_dir), run_dir / VOCAB, CONFIG, "restore the run's own vocab.json")
    path = checkpoint_path(run_dir, checkpoint)
    arrays, where = read_weights(path, model_config)
    return RunArrays(arrays, vocab, model_config, train_config, corpus, {"file": path.name, **where})
