"""Batches as in the tutorial: non-overlapping chunks of seq_len + 1 characters.

Each chunk gives input = chunk[:-1] and target = chunk[1:]. Chunks are shuffled every epoch, batches
have a fixed size and the last partial batch is dropped, so Shakespeare with batch 64, sequence 100 and
no validation split gives the tutorial's 172 steps per epoch. The shuffle of epoch e depends only on
(seed, e), which is what lets an interrupted run resume mid-epoch on exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.errors import CharRNNError


def split(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Train on the first part, validate on the last `val_fraction` of the text (never shuffled in)."""
    if not 0.0 <= val_fraction < 1.0:
        raise CharRNNError(f"--val-fraction must be in [0, 1); got {val_fraction}")
    n_val = int(round(len(ids) * val_fraction))
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


def chunk(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping (n, seq_len + 1) chunks; the remainder shorter than a chunk is dropped."""
    n = len(ids) // (seq_len + 1)
    return ids[: n * (seq_len + 1)].reshape(n, seq_len + 1)


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle's seed for `epoch`: a pure function of (seed, epoch), within torch's seed range."""
    return (seed * 1_000_003 + epoch) % 2**64


@dataclass
class Batches:
    """Shuffled fixed-size training batches over one array of ids."""

    ids: np.ndarray
    batch_size: int
    seq_len: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.seq_len < 1:
            raise CharRNNError("--batch-size and --seq-len must be at least 1")
        self.chunks = chunk(self.ids, self.seq_len)
        if len(self.chunks) < self.batch_size:
            need = self.batch_size * (self.seq_len + 1)
            raise CharRNNError(
                f"the training text ({len(self.ids):,} characters) is too short for one batch of "
                f"{self.batch_size} x {self.seq_len + 1} = {need:,} characters; "
                "lower --batch-size or --seq-len, or give more text"
            )

    def __len__(self) -> int:
        """Steps per epoch."""
        return len(self.chunks) // self.batch_size

    def order(self, epoch: int) -> torch.Tensor:
        """The chunk permutation of `epoch`, a pure function of (seed, epoch)."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(len(self.chunks), generator=generator)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields (inputs, targets), each (batch, seq_len) int64, from step `start` of `epoch`."""
        order = self.order(epoch).numpy()
        for step in range(start, len(self)):
            rows = self.chunks[order[step * self.batch_size : (step + 1) * self.batch_size]]
            batch = torch.from_numpy(rows.astype(np.int64))  # (batch, seq_len + 1)
            yield batch[:, :-1], batch[:, 1:]


def eval_batches(ids: np.ndarray, seq_len: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every chunk once, in order (the last batch may be smaller), plus the leftover tail if it has
    at least two characters, so evaluation scores (almost) every character of the text."""
    chunks = chunk(ids, seq_len)
    for start in range(0, len(chunks), batch_size):
        batch = torch.from_numpy(chunks[start : start + batch_size].astype(np.int64))
        yield batch[:, :-1], batch[:, 1:]
    tail = ids[len(chunks) * (seq_len + 1) :]
    if len(tail) >= 2:
        batch = torch.from_numpy(tail.astype(np.int64))[None]  # (1, tail)
        yield batch[:, :-1], batch[:, 1:]


def eval_sample(ids: np.ndarray, max_chars: int, seq_len: int) -> np.ndarray:
    """At most `max_chars` of `ids` to validate on, the same every epoch (0 = all of them).

    A split within the bound is returned as it is (so a small run scores its whole split). A larger one
    gives evenly spaced windows of seq_len + 1 characters across the whole split, copied into one array:
    eval_batches cuts it back into exactly those windows, so every scored chunk is real contiguous text.
    """
    if max_chars == 0 or len(ids) <= max_chars:
        return ids
    window = seq_len + 1
    if max_chars < window:  # a bound below one window: its first characters
        return np.ascontiguousarray(ids[:max_chars])
    count = max_chars // window
    starts = np.linspace(0, len(ids) - window, count).astype(np.int64)  # (count,)
    return np.ascontiguousarray(ids[starts[:, None] + np.arange(window)]).reshape(-1)  # (count * window,)


@dataclass
class Streams:
    """Stateful training batches, as karpathy/char-rnn and torch-rnn lay them out: the text is cut into
    `batch_size` contiguous streams, and batch s holds characters [s * seq_len, (s + 1) * seq_len) of
    every stream, so row b of one batch continues exactly where row b of the previous batch stopped and
    the recurrent state can be carried across. Each epoch starts the streams at a random offset in
    [0, seq_len) (a pure function of (seed, epoch), like Batches' shuffle), so chunk boundaries move."""

    ids: np.ndarray
    batch_size: int
    seq_len: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.seq_len < 1:
            raise CharRNNError("--batch-size and --seq-len must be at least 1")
        # seq_len characters are kept back for the largest offset; +1 per stream for the last target.
        self.stream_len = (len(self.ids) - self.seq_len) // self.batch_size
        if len(self) < 1:
            need = self.batch_size * (self.seq_len + 1) + self.seq_len
            raise CharRNNError(
                f"the training text ({len(self.ids):,} characters) is too short for {self.batch_size} streams of "
                f"at least {self.seq_len + 1} characters ({need:,} in all); lower --batch-size or --seq-len, or give more text"
            )

    def __len__(self) -> int:
        """Steps per epoch."""
        return max(0, (self.stream_len - 1) // self.seq_len)

    def offset(self, epoch: int) -> int:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return int(torch.randint(self.seq_len, (1,), generator=generator))

    def starts(self, epoch: int) -> np.ndarray:
        """(batch,) index of each stream's first character in `ids` for `epoch`."""
        return self.offset(epoch) + np.arange(self.batch_size, dtype=np.int64) * self.stream_len

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields (inputs, targets), each (batch, seq_len) int64, from step `start` of `epoch`."""
        starts = self.starts(epoch)
        columns = np.arange(self.seq_len + 1, dtype=np.int64)  # (seq_len + 1,)
        for step in range(start, len(self)):
            rows = self.ids[(starts + step * self.seq_len)[:, None] + columns]  # (batch, seq_len + 1)
            batch = torch.from_numpy(rows.astype(np.int64))
            yield batch[:, :-1], batch[:, 1:]
