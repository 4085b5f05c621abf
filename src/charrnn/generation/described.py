"""What a model loaded from a run says about itself: one description, whichever path generates with it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.model import memory
from charrnn.storage.run import epoch_record


class Described:
    """`describe()` and `last_epoch` over the attributes a run's model sets: `vocab`, `config`, `corpus`,
    `run_dir` (None: not from a run folder) and `checkpoint` ({"file", "epoch", "step"} of the weight file
    read, or None)."""

    vocab: Vocab
    config: ModelConfig
    corpus: dict[str, Any]
    run_dir: Path | None
    checkpoint: dict[str, Any] | None

    def describe(self) -> dict[str, Any]:
        """Architecture, vocabulary, parameters, the checkpoint loaded and the metrics of its last epoch."""
        return {
            "vocab_size": len(self.vocab),
            "cell": self.config.cell,
            "num_layers": self.config.num_layers,
            "embedding_size": self.config.embedding_size,
            "hidden_size": self.config.hidden_size,
            "parameters": memory.parameter_count(self.config),
            "corpus": self.corpus,
            "checkpoint": self.checkpoint,
            "last_epoch": self.last_epoch,
        }

    @functools.cached_property
    def last_epoch(self) -> dict[str, Any] | None:
        """metrics.jsonl's record of the epoch the loaded weights finished, read once: epochs the run trains
        on after them describe other weights."""
        step = (self.checkpoint or {}).get("step")
        return epoch_record(self.run_dir, step) if self.run_dir and step is not None else None
