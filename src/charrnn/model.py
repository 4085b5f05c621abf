"""The model: Embedding -> GRU/LSTM/RNN -> Dense, with the recurrent state passed in and out.

`forward(ids, state) -> (logits, state)` is used both for training (whole sequences, state None) and
for generation (one character at a time, state carried), so there is one module and one set of weights.
The state is always one tensor (layers * states_per_layer, batch, hidden): LSTM stacks h over c, which
keeps batching, sampling and export code independent of the cell type.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig

_RNN_CLASSES = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.rnn = _RNN_CLASSES[config.cell](
            config.embedding_size,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            # torch applies this between layers only; with one layer it would warn and do nothing.
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.dense = nn.Linear(config.hidden_size, config.vocab_size)

    @property
    def states_per_layer(self) -> int:
        return 2 if self.config.cell == "lstm" else 1

    def initial_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zeros, (layers * states_per_layer, batch, hidden): the state before any character."""
        weight = self.dense.weight
        return torch.zeros(
            self.config.num_layers * self.states_per_layer,
            batch_size,
            self.config.hidden_size,
            device=device or weight.device,
            dtype=dtype or weight.dtype,
        )

    def forward(self, ids: torch.Tensor, state: torch.Tensor | None = None):
        """ids (batch, time) int64 -> logits (batch, time, vocab) and the new state."""
        x = self.embedding(ids)  # (batch, time, embedding)
        if self.config.cell == "lstm":
            h, c = (None, None) if state is None else state.chunk(2, dim=0)
            y, (h, c) = self.rnn(x, None if state is None else (h.contiguous(), c.contiguous()))
            new_state = torch.cat([h, c], dim=0)
        else:
            y, new_state = self.rnn(x, state)  # y: (batch, time, hidden)
        logits = self.dense(self.dropout(y))  # (batch, time, vocab)
        return logits, new_state


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summary(model: CharRNN) -> str:
    """A Keras-style table of layers, output shapes and parameter counts."""
    cfg = model.config
    layer_name = cfg.cell if cfg.num_layers == 1 else f"{cfg.cell} x{cfg.num_layers}"
    rows = [
        ("embedding (Embedding)", f"(batch, time, {cfg.embedding_size})", count_parameters(model.embedding)),
        (f"{layer_name} ({cfg.cell.upper()})", f"(batch, time, {cfg.hidden_size})", count_parameters(model.rnn)),
        ("dense (Linear)", f"(batch, time, {cfg.vocab_size})", count_parameters(model.dense)),
    ]
    widths = (28, 26, 12)
    rule = "-" * sum(widths)
    lines = [
        f'Model: "charrnn" ({cfg.cell}, vocabulary {cfg.vocab_size})',
        rule,
        f"{'Layer (type)':<{widths[0]}}{'Output Shape':<{widths[1]}}{'Param #':>{widths[2]}}",
        "=" * sum(widths),
    ]
    for name, shape, params in rows:
        lines.append(f"{name:<{widths[0]}}{shape:<{widths[1]}}{params:>{widths[2]},}")
    lines += ["=" * sum(widths), f"Total params: {count_parameters(model):,}", f"Trainable params: {count_parameters(model):,}", rule]
    return "\n".join(lines)
