"""Validation loss under three protocols, so that a number always says how it was measured.

    chunks    the text cut into seq_len + 1 character chunks, the state reset for each (the tutorial's
              way): the first characters of every
              chunk are guessed with no context, so this is the most pessimistic of the three.
    stateful  the whole text streamed once with the state carried, as generation sees text. For speed
              the text is scored as `streams` parallel pieces; each piece after the first is primed on
              the `warmup` characters before it (not scored), so every character is scored once with at
              least that much context. streams=1 is the literal single pass.
    windows   nanoGPT's estimate_loss: `count` random windows of `window` characters (fixed seed), no
              carried state, the loss averaged over every position of every window. nanoGPT draws
              200 batches of 64 windows of 256 from val text[int(0.9 n):]; the figure compares one to
              one with its published 1.4697.

Training (Trainer.evaluate) and `charrnn eval` / CharModel.evaluate both call `evaluate` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.config import PROTOCOLS
from charrnn.data.batches import eval_batches
from charrnn.errors import CharRNNError
from charrnn.model import memory
from charrnn.model.network import CharRNN

WINDOWS_SEED = 1337  # nanoGPT's seed; any fixed value would do


@dataclass(frozen=True)
class Protocols:
    """The settings of the three protocols."""

    seq_len: int = 100  # chunks: characters per chunk (the run's training seq_len)
    batch_size: int = 64  # chunks and windows: sequences per forward pass (does not change the result)
    windows: int = 12_800  # windows: how many (nanoGPT: 200 x 64)
    window_len: int = 256  # windows: characters per window (nanoGPT's block size)
    streams: int = 16  # stateful: pieces scored in parallel
    warmup: int = 1_000  # stateful: characters each later piece is primed on before scoring
    time_block: int = 512  # stateful: steps per forward call (memory only; the state is carried across)

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "windows", "window_len", "streams", "warmup", "time_block"):
            value, least = getattr(self, name), 0 if name == "warmup" else 1
            if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
                kind = "a non-negative" if least == 0 else "a positive"
                raise CharRNNError(f"{name} must be {kind} integer; got {value!r}")


def evaluate(model: CharRNN, ids: np.ndarray, protocol: str, settings: Protocols = Protocols()) -> float:
    """Mean cross-entropy in nats/char of `ids` under `protocol`."""
    if len(ids) < 2:
        raise CharRNNError("evaluation text is shorter than two characters; nothing to score")
    if protocol == "chunks":
        return evaluate_loss(model, ids, settings.seq_len, settings.batch_size)
    if protocol == "stateful":
        return stateful_loss(model, ids, settings.streams, settings.warmup, settings.time_block)
    if protocol == "windows":
        return windows_loss(model, ids, settings.windows, settings.window_len, settings.batch_size)
    raise CharRNNError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")


def _device(model: CharRNN) -> torch.device:
    return model.dense.weight.device


@torch.inference_mode()
def stateful_loss(
    model: CharRNN, ids: np.ndarray, streams: int = 16, warmup: int = 1_000, time_block: int = 512
) -> float:
    """Every target ids[1:] scored once with the state carried (see the module docstring)."""
    targets_total = len(ids) - 1
    streams = max(1, min(streams, targets_total))
    bounds = np.linspace(1, len(ids), streams + 1).astype(np.int64)  # piece k scores targets [bounds[k], bounds[k+1])
    firsts = np.maximum(0, bounds[:-1] - 1 - warmup)  # (streams,) each piece's first input position
    length = int((bounds[1:] - 1 - firsts).max())  # inputs of the longest piece
    inputs = np.zeros((streams, length), dtype=np.int64)
    targets = np.full((streams, length), -100, dtype=np.int64)  # -100: not scored (warm-up and padding)
    for k in range(streams):
        n = int(bounds[k + 1] - 1 - firsts[k])
        inputs[k, :n] = ids[firsts[k] : firsts[k] + n]
        scored = slice(int(bounds[k] - 1 - firsts[k]), n)
        targets[k, scored] = ids[firsts[k] + 1 : firsts[k] + n + 1][scored]
    was_training = model.training
    model.eval()
    device = _device(model)
    inputs_t, targets_t = torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)
    state, total = None, 0.0
    for start in range(0, length, time_block):
        logits, state = model(inputs_t[:, start : start + time_block], state)  # (streams, block, vocab)
        total += F.cross_entropy(
            logits.flatten(0, 1).float(),
            targets_t[:, start : start + time_block].flatten(),
            ignore_index=-100,
            reduction="sum",
        ).item()
    model.train(was_training)
    return total / targets_total


def window_starts(length: int, count: int, window: int, seed: int = WINDOWS_SEED) -> np.ndarray:
    """(count,) start positions of the windows protocol over a text of `length` ids: a pure function of
    its arguments, so every model is scored on the same windows."""
    if length < window + 1:
        raise CharRNNError(
            f"the windows protocol needs a text longer than one window ({window + 1} characters); this one has {length}"
        )
    memory.check(count * 8, f"the start positions of {count:,} windows", "lower the windows (--windows, eval_windows)")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(length - window, (count,), generator=generator).numpy()


@torch.inference_mode()
def windows_loss(
    model: CharRNN,
    ids: np.ndarray,
    count: int = 12_800,
    window: int = 256,
    batch_size: int = 64,
    seed: int = WINDOWS_SEED,
) -> float:
    """nanoGPT's estimate_loss over `count` windows: x = ids[i : i + window], y = ids[i + 1 : i + window + 1],
    the state reset per window, the mean over all count x window positions."""
    config = model.config
    per_position = config.vocab_size + 4 * config.hidden_size  # logits, and one layer's gate inputs and outputs
    memory.check(
        min(count, batch_size) * window * per_position * memory.FLOAT_BYTES,
        f"scoring windows of {window:,} characters, {min(count, batch_size)} at a time",
        "lower the window length (--window-len, eval_window_len)",
    )
    starts = window_starts(len(ids), count, window, seed)
    columns = np.arange(window + 1)
    was_training = model.training
    model.eval()
    device = _device(model)
    total = 0.0
    for first in range(0, count, batch_size):
        rows = torch.from_numpy(ids[starts[first : first + batch_size, None] + columns].astype(np.int64)).to(device)
        logits, _ = model(rows[:, :-1])  # (batch, window, vocab)
        total += F.cross_entropy(logits.flatten(0, 1).float(), rows[:, 1:].flatten(), reduction="sum").item()
    model.train(was_training)
    return total / (count * window)


@torch.inference_mode()
def evaluate_loss(model: CharRNN, ids: np.ndarray, seq_len: int, batch_size: int) -> float:
    """Mean cross-entropy (nats/char) over `ids`, chunked like training, state reset per chunk."""
    was_training = model.training
    model.eval()
    device = model.dense.weight.device
    total, count = 0.0, 0
    for inputs, targets in eval_batches(ids, seq_len, batch_size):
        logits, _ = model(inputs.to(device))
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().to(device), reduction="sum").item()
        count += targets.numel()
    model.train(was_training)
    if count == 0:
        raise CharRNNError("evaluation text is shorter than two characters; nothing to score")
    return total / count
