"""Scoring the validation split during training: the criterion (val_protocol) and val_also's other protocols.

The trainer's `evaluate` and `evaluate_protocols` call these; the epoch's end calls the trainer's methods, so
that a subclass or an instance that replaces them changes what early stopping sees."""

from __future__ import annotations

import numpy as np

from charrnn.config import TrainConfig, also_protocols
from charrnn.data.batches import eval_sample
from charrnn.errors import CharRNNError
from charrnn.model.network import CharRNN
from charrnn.model.scoring import Protocols, evaluate


class Validation:
    """The validation split of a run and what each protocol scores of it."""

    def __init__(self, val_ids: np.ndarray, config: TrainConfig):
        self.config = config
        self.ids = val_ids
        # chunks scores a fixed sample of at most eval_chars characters spread over the split; stateful
        # the split's first eval_chars characters (a stream must be contiguous); windows draws its
        # windows from the whole split (its cost is set by eval_windows, not by the split's size).
        self.sample = eval_sample(val_ids, config.eval_chars, config.seq_len)
        self.protocols = Protocols(
            seq_len=config.seq_len,
            batch_size=config.batch_size,
            windows=config.eval_windows,
            window_len=config.eval_window_len,
        )
        if len(val_ids) and len(val_ids) < 2:
            raise CharRNNError("the validation part is too short to score; raise --val-fraction or set it to 0")

    def losses(self, model: CharRNN, protocols=None) -> dict[str, float] | None:
        """{protocol: validation loss in nats/char} (None without a validation split); by default
        val_protocol first, then val_also's."""
        if len(self.ids) < 2:
            return None
        names = protocols or dict.fromkeys([self.config.val_protocol, *also_protocols(self.config.val_also)])
        result = {}
        for name in names:
            ids = {"chunks": self.sample, "windows": self.ids}.get(name)
            if ids is None:  # stateful: a contiguous stretch
                ids = self.ids[: self.config.eval_chars] if self.config.eval_chars else self.ids
            result[name] = evaluate(model, ids, name, self.protocols)
        return result

    def loss(self, model: CharRNN, ids: np.ndarray | None = None) -> float | None:
        """The criterion's loss in nats/char (None without a validation split): on the fixed sample of at
        most `eval_chars` characters unless `ids` are given."""
        if ids is None:
            losses = self.losses(model, [self.config.val_protocol])
            return None if losses is None else losses[self.config.val_protocol]
        if len(ids) < 2:
            return None
        return evaluate(model, ids, self.config.val_protocol, self.protocols)
