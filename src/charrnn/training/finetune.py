"""Fine-tuning (`charrnn train --init-from RUN --text NEW`): a new run that starts from another run's weights.

The new run keeps the source's vocabulary ids and appends the new text's new characters (Vocab.extend);
their embedding rows and output rows keep the fresh initialisation of a new model seeded with the new
run's seed, so the same seed gives the same start. Everything else (every layer's shape, and the
weights) is the source's. The optimizer starts fresh: Adam's moments belong to the old text's loss.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.model import weights as weight_files
from charrnn.model.network import CharRNN
from charrnn.storage import run as run_folder

SHAPE_FIELDS = ("cell", "num_layers", "hidden_size", "embedding_size")  # dropout may change: not a shape
VOCAB_ROWS = ("embedding.weight", "dense.weight", "dense.bias")  # the parameters with one row per character


@dataclass(frozen=True)
class Source:
    """The run a fine-tune starts from."""

    model_config: ModelConfig
    vocab: Vocab
    weights: dict[str, torch.Tensor]
    record: dict[str, Any]  # written to the new run's config.json as started_from


def read_source(run: str | Path) -> Source:
    """The source run's model shape, vocabulary and weights (best checkpoint if it has one, else latest)."""
    run = Path(run)
    if not run_folder.is_run(run):
        raise CharRNNError(
            f"--init-from {run} is not a charrnn run (no config.json); give a run directory, "
            "or import a TensorFlow model first with `charrnn import`"
        )
    model, vocab, model_config, _, corpus = weight_files.load_run(run)
    path = run_folder.checkpoint_path(run, None)
    with safe_open(str(path), framework="pt") as handle:
        step = json.loads((handle.metadata() or {}).get("step", "0"))
    record = {
        "kind": "run",
        "run": str(run.absolute()),
        "checkpoint": path.stem,
        "step": step,
        "corpus_sha256": corpus.get("sha256", ""),
    }
    return Source(model_config, vocab, {k: v.detach().clone() for k, v in model.state_dict().items()}, record)


def model_config(source: Source, vocab: Vocab, flags: dict[str, Any]) -> ModelConfig:
    """The new run's model: the source's shape, the extended vocabulary, and dropout if given."""
    clashes = [
        f"--{name.replace('_size', '').replace('num_', '')} {flags[name]} (the source has "
        f"{getattr(source.model_config, name)})"
        for name in SHAPE_FIELDS
        if name in flags and flags[name] != getattr(source.model_config, name)
    ]
    if clashes:
        raise CharRNNError(
            f"--init-from takes the model's shape from {source.record['run']}: drop {', '.join(clashes)}"
        )
    return dataclasses.replace(
        source.model_config, vocab_size=len(vocab), dropout=flags.get("dropout", source.model_config.dropout)
    )


def initial_model(config: ModelConfig, source: Source, seed: int) -> CharRNN:
    """A model seeded like a new run, then overwritten with the source's weights; the rows of characters
    the source never saw (after its own) keep their fresh values."""
    torch.manual_seed(seed)
    model = CharRNN(config)
    old = len(source.vocab)
    state = model.state_dict()
    for name, value in source.weights.items():
        if name in VOCAB_ROWS:
            state[name][:old] = value  # (old vocab, ...) of (new vocab, ...)
        else:
            state[name].copy_(value)
    return model


def remap(ids: np.ndarray, corpus_vocab: Vocab, vocab: Vocab) -> np.ndarray:
    """The text's ids (in its own sorted vocabulary) as ids of `vocab`, which holds all its characters.
    Held in memory, unlike a new run's memory-mapped ids: fine-tuning texts are small."""
    table = vocab.encode("".join(corpus_vocab.chars))  # corpus id -> run id
    return table[np.asarray(ids)]
