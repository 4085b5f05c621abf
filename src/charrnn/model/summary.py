"""The model summary printed before training (Keras's `model.summary()` layout) and parameter counts."""

from __future__ import annotations

from torch import nn

from charrnn.config import ModelConfig
from charrnn.model import memory
from charrnn.model.network import CharRNN


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summary(model: CharRNN) -> str:
    """A Keras-style table of layers, output shapes and parameter counts."""
    counts = (count_parameters(model.embedding), count_parameters(model.rnn), count_parameters(model.dense))
    return _table(model.config, counts)


def config_summary(config: ModelConfig) -> str:
    """`summary` of the model `config` describes, from the config alone: nothing is allocated, so a model
    larger than this machine's memory is described too."""
    return _table(config, memory.parameter_counts(config))


def _table(cfg: ModelConfig, counts: tuple[int, int, int]) -> str:
    layer_name = cfg.cell if cfg.num_layers == 1 else f"{cfg.cell} x{cfg.num_layers}"
    rows = [
        ("embedding (Embedding)", f"(batch, time, {cfg.embedding_size})", counts[0]),
        (f"{layer_name} ({cfg.cell.upper()})", f"(batch, time, {cfg.hidden_size})", counts[1]),
        ("dense (Linear)", f"(batch, time, {cfg.vocab_size})", counts[2]),
    ]
    total = sum(counts)
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
    lines += [
        "=" * sum(widths),
        f"Total params: {total:,}",
        f"Trainable params: {total:,}",
        rule,
    ]
    return "\n".join(lines)
