"""The generation loop, independent of what computes the logits (PyTorch, or ONNX Runtime without torch).

A backend primes each prompt and advances the batch one character at a time; this module owns prompts,
argument checks, the random stream and sampling. So `charrnn.load(RUN)` and
`charrnn.runtime.load(EXPORT)` behave identically, and the same seed gives the same text from both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from numbers import Integral
from typing import Any, Protocol

import numpy as np

from charrnn.config import MAX_SEED
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.generation.sampling import check_sampling, sample
from charrnn.model import memory

# Tried in order when the prompt is empty: a fresh line is the most neutral start for most texts.
DEFAULT_PRIMERS = ("\n", " ", ".")

# Long prompts are primed this many characters at a time, the state carried from piece to piece: a pass
# over a whole 1 MB prompt keeps every position's activations (about a gigabyte at 64 units), a piece's
# take a few megabytes.
PRIME_PIECE = 4096


class Backend(Protocol):
    def prime(self, prompts: list[np.ndarray], num_samples: int) -> tuple[np.ndarray, Any]:
        """Run each prompt's ids; return next-character logits (prompts * num_samples, vocab), prompt-major,
        and the batch's state."""

    def step(self, ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """Feed one id per row (batch,); return logits (batch, vocab) and the new state."""

    # For the server's continuous batching (serving/batcher.py): requests join and leave a running batch.
    def join(self, states: list[Any]) -> Any:
        """The states' rows one after another, as one batch's state (a new one: the inputs may be reused)."""

    def take(self, state: Any, rows: list[int]) -> Any:
        """A new state holding only these rows of `state`, in this order."""


def pieces(ids: np.ndarray) -> list[np.ndarray]:
    """A prompt's ids as the pieces to prime with: PRIME_PIECE ids each, the last taking the remainder (up to
    2 * PRIME_PIECE - 1), so no piece is short: a matrix product's kernel, and so its rounding, can depend
    on how many rows it multiplies, and pieces this long compute what one pass over the whole prompt does."""
    count = max(1, len(ids) // PRIME_PIECE)
    bounds = [i * PRIME_PIECE for i in range(count)] + [len(ids)]
    return [ids[start:end] for start, end in zip(bounds, bounds[1:])]


def prime_in_pieces(
    prompts: list[np.ndarray],
    num_samples: int,
    state_shape: tuple[int, int],
    prime_piece: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Backend.prime for a numpy backend: each prompt from a zero state (layers, 1, hidden) of
    `state_shape` (layers, hidden), through `prime_piece(ids (time,) int64, state) -> (logits (1, vocab),
    state)` piece by piece with the state carried, so memory stays flat in the prompt's length; then each
    prompt's logits and state repeated for its `num_samples` rows."""
    logits, states = [], []
    for ids in prompts:
        state = np.zeros((state_shape[0], 1, state_shape[1]), dtype=np.float32)
        for piece in pieces(ids):
            out, state = prime_piece(piece.astype(np.int64), state)
        logits.append(np.repeat(out, num_samples, axis=0))  # (num_samples, vocab)
        states.append(np.repeat(state, num_samples, axis=1))  # (layers, num_samples, hidden)
    with memory.allocating(
        f"the recurrent state of {len(prompts) * num_samples:,} samples", "lower --num-samples (num_samples)"
    ):
        return np.concatenate(logits), np.ascontiguousarray(np.concatenate(states, axis=1))


def prompt_ids(vocab: Vocab, prompt: str, drop_unknown: bool) -> tuple[np.ndarray, bool]:
    """Ids to prime with, and whether they are the user's prompt (else a default primer, not shown)."""
    if not isinstance(prompt, str):
        raise CharRNNError(f"prompt must be a string; got {type(prompt).__name__}")
    missing = vocab.unknown(prompt)
    if missing and not drop_unknown:
        shown = ", ".join(repr(c) for c in missing[:10])
        raise CharRNNError(
            f"the prompt has character(s) the model never saw: {shown}; remove them, or drop them with "
            "drop_unknown (--drop-unknown on the command line)"
        )
    ids = vocab.encode(prompt, drop_unknown=True)
    if len(ids):
        return ids, True
    primer = next((c for c in DEFAULT_PRIMERS if c in vocab), vocab.chars[0])
    return vocab.encode(primer), False


def check_request(
    prompts: Sequence[str],
    length: int,
    num_samples: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None = None,
) -> None:
    if not prompts:
        raise CharRNNError("give at least one prompt")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= MAX_SEED):
        raise CharRNNError(f"seed must be an integer from 0 to 2**64 - 1; got {seed!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise CharRNNError(f"length must be a non-negative integer; got {length!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise CharRNNError(f"num_samples must be a positive integer; got {num_samples!r}")
    check_sampling(temperature, top_k, top_p)


def stream(
    backend_for,
    vocab: Vocab,
    prompt: str | Sequence[str] = "",
    length: int = 1000,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    num_samples: int = 1,
    drop_unknown: bool = False,
    state_values: int = 0,
) -> Iterator[list[str]]:
    """Yield the prompts, then one character per sample per step (see CharModel.stream).
    `backend_for(batch)` returns the Backend to use for that many rows; `state_values` is the size of one
    row's recurrent state (for the memory check; 0 if unknown)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    check_request(prompts, length, num_samples, temperature, top_k, top_p, seed)
    encoded = [prompt_ids(vocab, p, drop_unknown) for p in prompts]
    memory.check_batch(len(prompts) * num_samples, state_values, len(vocab))
    backend = backend_for(len(prompts) * num_samples)
    rng = np.random.default_rng(seed)
    logits, state = backend.prime([ids for ids, _ in encoded], num_samples)
    shown = [vocab.decode(ids) if shown else "" for ids, shown in encoded]  # once each: a prompt may be megabytes
    yield [text for text in shown for _ in range(num_samples)]
    chars = vocab.chars
    for step in range(length):
        next_ids = sample(logits, rng, temperature, top_k, top_p, checked=True)  # (batch,)
        yield [chars[i] for i in next_ids]
        if step + 1 < length:
            logits, state = backend.step(next_ids, state)


def join(pieces: Iterator[list[str]]) -> list[str]:
    """Every sample of a stream in full: the prompt followed by its generated characters."""
    return ["".join(column) for column in zip(*pieces)]


class Generator:
    """`stream` and `generate` over `self.backend(batch)` and `self.vocab`: the interface CharModel (PyTorch)
    and ExportedModel (ONNX Runtime) share, so both run exactly this loop."""

    vocab: Vocab

    def backend(self, batch: int) -> Backend:
        raise NotImplementedError

    def state_values(self) -> int:
        """Floats in one row's recurrent state (0 if unknown): what each sample of a batch holds."""
        return 0

    def stream(
        self,
        prompt: str | Sequence[str] = "",
        length: int = 1000,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        num_samples: int = 1,
        drop_unknown: bool = False,
    ) -> Iterator[list[str]]:
        """Yield the text as it is produced: first the prompts, then one character per sample per step.

        Each item is a list with one string per sample (prompt-major: all samples of the first prompt,
        then the next). `"".join` of a sample's pieces equals its entry in `generate`."""
        return stream(
            self.backend,
            self.vocab,
            prompt,
            length,
            temperature,
            top_k,
            top_p,
            seed,
            num_samples,
            drop_unknown,
            self.state_values(),
        )

    def generate(
        self,
        prompt: str | Sequence[str] = "",
        length: int = 1000,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        num_samples: int = 1,
        drop_unknown: bool = False,
    ) -> list[str]:
        """Generate `num_samples` texts per prompt, each the prompt followed by `length` new characters."""
        return join(self.stream(prompt, length, temperature, top_k, top_p, seed, num_samples, drop_unknown))
