"""Which model size for a time budget: `charrnn train --max-minutes M` with no preset and no model flags.

The rule (docs/quality.md): take the candidates below from small to large, measure each one's training
step on this machine at the run's batch (one warm-up step, then the mean of two), and keep the largest
that satisfies both
    parameters <= characters seen in the budget / CHARS_PER_PARAMETER   (it gets enough training), and
    parameters <= PARAMETERS_PER_CHARACTER x training characters          (the text can support it).
The first bound is the budget's, the second the corpus's. The constants are calibrated on Shakespeare:
the 2 x GRU 512 model (2.6M parameters) of the shakespeare-30min presets, the best measured for 30 minutes on a 2-core
CPU, sees about 30M characters there (ratio ~11), and with dropout it generalises from 1M characters
of text. The smallest candidate is used when none fits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.config import ModelConfig, TrainConfig
from charrnn.model.network import CharRNN
from charrnn.model.precision import resolve_device, resolve_precision
from charrnn.model.summary import count_parameters

CHARS_PER_PARAMETER = 10
PARAMETERS_PER_CHARACTER = 3

# (layers, hidden, embedding, dropout): dropout grows with size, as the larger ones overfit first.
CANDIDATES = (
    (1, 128, 64, 0.0),
    (2, 256, 64, 0.1),
    (2, 384, 128, 0.2),
    (2, 512, 128, 0.25),
    (2, 768, 128, 0.3),
    (3, 1024, 256, 0.3),
)


@dataclass(frozen=True)
class Choice:
    model: dict  # ModelConfig fields (without vocab_size)
    parameters: int
    step_seconds: float
    chars_seen: float  # in the budget, at the measured speed
    reason: str


def model_fields(candidate: tuple) -> dict:
    layers, hidden, embedding, dropout = candidate
    return {"num_layers": layers, "hidden_size": hidden, "embedding_size": embedding, "dropout": dropout}


def choose(
    vocab_size: int, train_chars: int, seconds: float, batch_chars: int, step_seconds: Callable[[dict], float]
) -> Choice:
    """The rule above; step_seconds(model fields) measures (or, in tests, models) one training step."""
    chosen, reason = None, "the largest candidate"
    for candidate in CANDIDATES:
        fields = model_fields(candidate)
        parameters = count_parameters(CharRNN(ModelConfig(vocab_size=vocab_size, **fields)))
        if chosen is not None and parameters > PARAMETERS_PER_CHARACTER * train_chars:
            reason = f"the next size ({parameters:,} parameters) is over {PARAMETERS_PER_CHARACTER} x the training characters"
            break  # the corpus bound: no need to time it
        step = step_seconds(fields)
        seen = seconds / step * batch_chars
        if chosen is not None and parameters > seen / CHARS_PER_PARAMETER:
            reason = (
                f"the next size ({parameters:,} parameters, {1000 * step:.0f} ms/step) would see only "
                f"{seen / parameters:.1f} characters per parameter in the budget (< {CHARS_PER_PARAMETER})"
            )
            break  # the budget bound: larger ones are slower still
        chosen = Choice(fields, parameters, step, seen, "")
    assert chosen is not None
    return Choice(chosen.model, chosen.parameters, chosen.step_seconds, chosen.chars_seen, reason)


def measure(config: TrainConfig, vocab_size: int) -> Callable[[dict], float]:
    """Seconds per training step of a model on this machine, at the run's batch, device and precision."""
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    generator = torch.Generator().manual_seed(0)  # its own: the run's seeded random numbers stay untouched

    def step_seconds(fields: dict) -> float:
        model = CharRNN(ModelConfig(vocab_size=vocab_size, **fields)).to(device)
        model.compute_dtype = dtype
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        ids = torch.randint(vocab_size, (config.batch_size, config.seq_len + 1), generator=generator).to(device)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            logits, _ = model(ids[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
        return float(np.mean(times[1:]))

    return step_seconds


def pick(config: TrainConfig, data_dir=None, say: Callable[[str], None] = print) -> dict:
    """Model settings for `config`'s text and max_minutes, by the rule above; says what it chose and why."""
    from charrnn.data.batches import split
    from charrnn.data.prepare import prepare

    corpus = prepare(
        config.text,
        encoding=config.encoding,
        skip_chars=config.skip_chars,
        data_dir=data_dir,
        decode_errors=config.decode_errors,
    )
    train_chars = len(split(corpus.ids, config.val_fraction)[0])
    say(f"no model size given: timing candidate sizes for a {config.max_minutes:g}-minute budget ...")
    choice = choose(
        len(corpus.vocab),
        train_chars,
        60 * config.max_minutes,
        config.batch_size * config.seq_len,
        measure(config, len(corpus.vocab)),
    )
    m = choice.model
    say(
        f"chose {m['num_layers']} x {m['hidden_size']} (embedding {m['embedding_size']}, dropout {m['dropout']}; "
        f"{choice.parameters:,} parameters): {1000 * choice.step_seconds:.0f} ms/step here -> ~{choice.chars_seen:,.0f} "
        f"characters seen in the budget, {train_chars:,} training characters; stopped because {choice.reason} "
        "(rule: docs/quality.md; give --hidden/--layers to choose yourself)"
    )
    return m
