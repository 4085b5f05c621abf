"""Generation's weights laid out for step.c, and its first layer's input table, with numpy alone.

The one packing implementation: step.py wraps these arrays as tensors for the PyTorch path, and
generation/kernel_model.py steps them without PyTorch, so both paths multiply the same bytes.

Kinds are step.c's product types: "f32", "bf16" (stored as uint16) and "i8". Rows are padded to
`multiple` per group and columns to `pad_width` with zeros, so every output goes through the same code
with no leftovers. int8 weights are quantised per row, symmetric over 127 levels (see step.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from charrnn.kernels import build

KINDS = ("f32", "bf16", "i8")
STORED = {"f32": np.float32, "bf16": np.uint16, "i8": np.int8}  # the packed weights' element type
INPUTS = {"f32": np.float32, "bf16": np.uint16, "i8": np.uint8}  # the input scratch's element type


def pad_width(n: int, kind: str) -> int:
    """Columns of packed weights, and of the input scratch, for n input features."""
    multiple = 64 if kind == "i8" else 32
    return -(-n // multiple) * multiple


def scratch(batch: int, n: int, kind: str) -> np.ndarray:
    """The (batch, pad_width(n)) buffer a product's inputs are converted into."""
    return np.empty((batch, pad_width(n, kind)), dtype=INPUTS[kind])


def default_threads() -> int:
    """The CPUs this process may run on: results never depend on it, only the speed does."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Packed:
    """A layer's weights as step.c reads them: weight (groups, rows_pad, n_pad) in STORED[kind], bias
    (groups, rows_pad) fp32, and for int8 the per-row scale (fp32) and zero-point correction (int32)."""

    weight: np.ndarray
    bias: np.ndarray
    scale: np.ndarray | None
    corr: np.ndarray | None
    rows: int  # per group, before padding
    n: int  # input features, before padding
    kind: str

    def pointers(self) -> list[int | None]:
        return [a.ctypes.data if a is not None else None for a in (self.weight, self.bias, self.scale, self.corr)]


def to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounded to nearest even as torch's .to(torch.bfloat16) does
    (NaN becomes a quiet NaN; torch's own paths disagree on its sign and payload)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (((bits >> 16) & 1) + np.uint32(0x7FFF))) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def pack(weight: np.ndarray, bias: np.ndarray, kind: str, groups: int = 1, multiple: int = 8) -> Packed:
    """weight (groups * rows, n), bias (groups * rows) -> Packed, rows padded to `multiple` per group."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    rows, n = weight.shape[0] // groups, weight.shape[1]
    rows_pad, n_pad = -(-rows // multiple) * multiple, pad_width(n, kind)
    w = np.asarray(weight, dtype=np.float32).reshape(groups, rows, n)
    packed = np.zeros((groups, rows_pad, n_pad), dtype=STORED[kind])
    padded_bias = np.zeros((groups, rows_pad), dtype=np.float32)
    padded_bias[:, :rows] = np.asarray(bias, dtype=np.float32).reshape(groups, rows)
    scale = corr = None
    if kind == "i8":
        # float32 throughout, as the PyTorch quantisation this replaced computed it (same bytes)
        step = np.maximum(np.abs(w).max(axis=2), np.float32(1e-30)) / np.float32(127)  # one level's value
        q = np.clip(np.rint(w / step[..., None]), -127, 127)  # rint: halves to even, like torch.round
        packed[:, :rows, :n] = q.astype(np.int8)
        scale, corr = np.zeros((groups, rows_pad), np.float32), np.zeros((groups, rows_pad), np.int32)
        scale[:, :rows] = step / np.float32(127)  # also undoes the inputs' 127
        corr[:, :rows] = 128 * q.astype(np.int32).sum(axis=2, dtype=np.int32)
    elif kind == "bf16":
        packed[:, :rows, :n] = to_bf16(w)
    else:
        packed[:, :rows, :n] = w
    return Packed(packed, padded_bias, scale, corr, rows, n, kind)


def _ptr(array: np.ndarray) -> int:
    return array.ctypes.data


def matvec(x: np.ndarray, packed: Packed, threads: int, out: np.ndarray | None = None) -> np.ndarray:
    """out (batch, rows) fp32 = x (batch, n) fp32 @ W.T + b through step.c's matvec: each output one dot
    product summed in a fixed order, whatever the batch or the thread count."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    batch = x.shape[0]
    out = np.empty((batch, packed.rows), dtype=np.float32) if out is None else out
    x_low = scratch(batch, packed.n, packed.kind)
    getattr(build.library(), f"matvec_{packed.kind}")(
        batch, packed.rows, packed.n, threads, *packed.pointers(), _ptr(x), _ptr(x_low), _ptr(out)
    )
    return out


def input_table(embedding: np.ndarray, w_ih: np.ndarray, b_ih: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Generation's first-layer input projection of every character, (vocab, 3H) fp32: embedding (vocab, E)
    @ w_ih (3H, E).T + b_ih, through step.c's fp32 matvec. The PyTorch path (network.PackedWeights) and the
    numpy one both call this, and its fixed-order sums give the same table in any process on this CPU.
    Needs the kernels (build.available())."""
    packed = pack(w_ih, b_ih, "f32")
    return matvec(embedding, packed, threads or default_threads())


def gru_sequence(gi: np.ndarray, h0: np.ndarray, packed: Packed, threads: int) -> np.ndarray:
    """hs (steps + 1, batch, H): h0, then the state after each step, from gi (steps, batch, 3H) fp32 through
    step.c's gru_layer_step, the step generation takes (packed = pack(W_hh, b_hh, kind, 3, 16))."""
    steps, batch, three_h = gi.shape
    hidden = three_h // 3
    gi = np.ascontiguousarray(gi, dtype=np.float32)
    hs = np.empty((steps + 1, batch, hidden), dtype=np.float32)
    hs[0] = h0
    x_low = scratch(batch, hidden, packed.kind)
    function = getattr(build.library(), f"gru_layer_step_{packed.kind}")
    weights, gi_at, h_at, low = packed.pointers(), _ptr(gi), _ptr(hs), _ptr(x_low)
    gi_row, h_row = gi.strides[0], hs.strides[0]  # one step's bytes: addresses computed, not sliced, per step
    for t in range(steps):
        function(batch, hidden, threads, *weights, gi_at + t * gi_row, h_at + t * h_row, low, h_at + (t + 1) * h_row)
    return hs
