"""Pure sampling functions on next-character logits.

numpy only, no torch: the same code, and the same random numbers, drive the PyTorch model and any
exported runtime, so a seed means the same text everywhere. The randomness is one
`numpy.random.Generator`; each step draws one uniform per row and inverts the row's CDF, so the text
depends only on (seed, logits), not on the backend's RNG.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from charrnn.errors import CharRNNError


def check_sampling(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> None:
    """Raise a CharRNNError that says what to pass instead if any setting is invalid."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, Real)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise CharRNNError(f"temperature must be a non-negative finite number (0 means greedy); got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 0:
        raise CharRNNError(f"top_k must be a non-negative integer (0 disables it); got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, Real) or not (0 < top_p <= 1):
        raise CharRNNError(f"top_p must be a number in (0, 1] (1 disables it); got {top_p!r}")


def probabilities(
    logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, checked: bool = False
) -> np.ndarray:
    """(batch, vocab) logits -> (batch, vocab) float64 probabilities after temperature, top-k, top-p.

    Temperature 0 puts all mass on the arg-max (the first one on ties). `checked=True` skips validating
    the settings (for loops that validated them once)."""
    if not checked:
        check_sampling(temperature, top_k, top_p)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, vocab); got shape {logits.shape}")
    batch, vocab = logits.shape
    if temperature == 0:
        probs = np.zeros_like(logits)
        probs[np.arange(batch), logits.argmax(axis=1)] = 1.0
        return probs
    # Shifted first, so a tiny temperature sends the others to -inf instead of overflowing to NaN.
    with np.errstate(over="ignore"):
        scaled = (logits - logits.max(axis=1, keepdims=True)) / temperature if temperature != 1 else logits
    if 0 < top_k < vocab:
        # Everything below the k-th largest logit is removed (ties with it are kept).
        kth = np.partition(scaled, vocab - top_k, axis=1)[:, vocab - top_k : vocab - top_k + 1]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p < 1.0:
        # Keep the smallest set of most likely characters whose mass reaches top_p: a character stays
        # when the mass of those more likely than it is still below top_p (so the first always stays).
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=1)
        mass_before = np.cumsum(sorted_probs, axis=1) - sorted_probs
        keep_sorted = mass_before < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


def _temperature_cdf(weights: np.ndarray, temperature) -> np.ndarray:
    """In place: float64 logits (rows, vocab) -> the unnormalised CDF of softmax(logits / temperature), for
    a temperature > 0 given as a number or per row as (rows, 1)."""
    weights -= weights.max(axis=1, keepdims=True)
    if isinstance(temperature, np.ndarray) or temperature < 1e-200:
        with np.errstate(over="ignore"):  # the shifted logits over a tiny temperature overflow to -inf, as they should
            weights /= temperature
    elif temperature != 1:  # (errstate costs as much as the rest of a batch-1 draw)
        weights /= temperature
    return np.exp(weights, out=weights).cumsum(axis=1, out=weights)


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row of a non-decreasing, unnormalised CDF (rows, vocab), the first index whose CDF reaches
    u * total, for u (rows,) in (0, 1]: an index with non-zero probability."""
    rows, vocab = cdf.shape
    if rows == 1:  # generation's common case, in fewer numpy calls
        return np.array([min(int(cdf[0].searchsorted(u[0] * cdf[0, -1])), vocab - 1)])
    return np.minimum((cdf < (u * cdf[:, -1])[:, None]).sum(axis=1), vocab - 1)


def sample(
    logits: np.ndarray,
    rng: np.random.Generator,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    checked: bool = False,
) -> np.ndarray:
    """Draw one id per row of (batch, vocab) logits; returns (batch,) int64."""
    if not checked:
        check_sampling(temperature, top_k, top_p)
    if temperature == 0 or (top_k == 0 and top_p == 1.0):
        # The common cases in a few vector operations: generation calls this once per character, and
        # at batch 1 the general path's numpy calls cost as much as the model's step. The same draws.
        logits = np.asarray(logits)
        if logits.ndim != 2:
            raise ValueError(f"logits must be (batch, vocab); got shape {logits.shape}")
        if temperature == 0:
            return logits.argmax(axis=1)
        cdf = _temperature_cdf(logits.astype(np.float64), temperature)  # (batch, vocab), on a copy
        return _draw(cdf, 1.0 - rng.random(cdf.shape[0]))
    probs = probabilities(logits, temperature, top_k, top_p, checked=True)
    if temperature == 0:
        return probs.argmax(axis=1)
    return _draw(np.cumsum(probs, axis=1), 1.0 - rng.random(probs.shape[0]))


def sample_rows(logits: np.ndarray, parts: list[tuple[int, np.random.Generator, float, int, float]]) -> np.ndarray:
    """Sample consecutive blocks of (batch, vocab) logits, each block (rows, rng, temperature, top_k, top_p)
    with its own random stream and settings (validated by the caller): exactly the ids `sample` gives each
    block alone. For the server, which steps many requests' rows together: the blocks that use plain
    temperature sampling share one set of vector operations instead of paying numpy's per-call cost each."""
    ids = np.empty(len(logits), dtype=np.int64)
    plain, start = [], 0
    for rows, rng, temperature, top_k, top_p in parts:
        if temperature > 0 and top_k == 0 and top_p == 1.0:
            plain.append((start, rows, rng, temperature))
        else:
            ids[start : start + rows] = sample(
                logits[start : start + rows], rng, temperature, top_k, top_p, checked=True
            )
        start += rows
    if plain:
        index = np.concatenate([np.arange(first, first + rows) for first, rows, _, _ in plain])
        # Row by row the arithmetic of sample() (dividing by a temperature of 1 changes nothing).
        temperatures = np.repeat([temperature for *_, temperature in plain], [rows for _, rows, _, _ in plain])[:, None]
        cdf = _temperature_cdf(np.asarray(logits)[index].astype(np.float64), temperatures)  # (plain rows, vocab)
        ids[index] = _draw(cdf, np.concatenate([1.0 - rng.random(rows) for _, rows, rng, _ in plain]))
    return ids
