"""Generation's products in C: a dot product per output, summed in one fixed order.

Why: at batch 1 PyTorch's GEMM paths cost 2-6x the time it takes to read the weights (bench/speed.py),
and each output here is one dot product summed in the same order whatever the batch or the thread
count, so a row's result does not depend on what else is in the batch: what lets the server step many
users' requests together and still give each the text it gets alone. forward() outside training runs
the same kernels, so stepping through a text equals re-running it. Built with build.py, from step.c.

Weights are packed once (`pack`: packing.py's numpy arrays, shared with the numpy generation path): rows
padded to a multiple of 8 (16 per gate for a GRU layer) and columns to `pad_width` with zeros, so every
output goes through the same code with no leftovers. Types:
- fp32 and bf16: dot products in fp32 (AVX-512 FMA / AVX512-BF16 dot products; portable C elsewhere).
- int8 (generation only, `--precision int8`): weights quantised per row (symmetric, 127 levels), the
  state quantised per step to 8 bits (it lies in [-1, 1] for a GRU), exact integer dot products
  (AVX512-VNNI), then rescaled: y = scale_o * (sum_i q(x)_i w_oi - 128 sum_i w_oi) + b_o. A quarter of
  fp32's bytes: a 1024-unit layer's weights fit in two cores' L2, which is what batch 1 waits on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from charrnn.kernels import build, packing

SUFFIXES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.int8: "i8"}
INPUT_TYPES = {torch.float32: torch.float32, torch.bfloat16: torch.bfloat16, torch.int8: torch.uint8}


def usable(dtype: torch.dtype) -> bool:
    return dtype in SUFFIXES and build.available()


def pad_width(n: int, dtype: torch.dtype) -> int:
    """Columns of packed weights, and of the input scratch, for n input features."""
    return packing.pad_width(n, SUFFIXES[dtype])


def scratch(batch: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The (batch, pad_width(n)) buffer a product's inputs are converted into."""
    return torch.empty(batch, pad_width(n, dtype), dtype=INPUT_TYPES[dtype])


@dataclass(frozen=True)
class Packed:
    """packing.Packed as tensors (the same memory): weight (groups, rows_pad, n_pad) in the product type,
    bias (groups, rows_pad) fp32, and for int8 the per-row scale (fp32) and zero-point correction (int32)."""

    weight: torch.Tensor
    bias: torch.Tensor
    scale: torch.Tensor | None
    corr: torch.Tensor | None
    rows: int  # per group, before padding
    n: int  # input features, before padding

    def pointers(self) -> list[int | None]:
        return [t.data_ptr() if t is not None else None for t in (self.weight, self.bias, self.scale, self.corr)]


@torch.no_grad()
def pack(weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype, groups: int = 1, multiple: int = 8) -> Packed:
    """weight (groups * rows, n), bias (groups * rows) -> Packed, rows padded to `multiple` per group:
    packing.pack's arrays, so the numpy generation path steps the very same bytes."""
    arrays = packing.pack(
        weight.detach().float().cpu().numpy(), bias.detach().float().cpu().numpy(), SUFFIXES[dtype], groups, multiple
    )
    packed = torch.from_numpy(arrays.weight)
    if dtype == torch.bfloat16:
        packed = packed.view(torch.bfloat16)  # uint16 bit patterns -> the same bits as bf16

    def tensor(array):
        return None if array is None else torch.from_numpy(array)

    return Packed(packed, tensor(arrays.bias), tensor(arrays.scale), tensor(arrays.corr), arrays.rows, arrays.n)


def _ptr(tensor: torch.Tensor):
    return tensor.data_ptr()


def matvec(x: torch.Tensor, packed: Packed, x_low: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out (batch, rows) fp32 = x (batch, n) fp32 @ W.T + b; x_low = scratch(batch, n, dtype)."""
    batch, n = x.shape
    getattr(build.library(), f"matvec_{SUFFIXES[packed.weight.dtype]}")(
        batch, packed.rows, n, torch.get_num_threads(), *packed.pointers(), _ptr(x), _ptr(x_low), _ptr(out)
    )
    return out


def gru_layer_step(gi: torch.Tensor, h: torch.Tensor, packed: Packed, h_low: torch.Tensor, h_out: torch.Tensor) -> None:
    """h_out (batch, H) = one GRU step from gi (batch, 3H) and h (batch, H), fp32, for packed = pack(W_hh,
    b_hh, dtype, 3, 16); h_low = scratch(batch, H, dtype)."""
    batch, hidden = h.shape
    getattr(build.library(), f"gru_layer_step_{SUFFIXES[packed.weight.dtype]}")(
        batch, hidden, torch.get_num_threads(), *packed.pointers(), _ptr(gi), _ptr(h), _ptr(h_low), _ptr(h_out)
    )


def model_step(dtype: torch.dtype):
    """The C function of one whole-model generation step (MODEL_STEP); the caller passes raw pointers."""
    return getattr(build.library(), f"gru_model_step_{SUFFIXES[dtype]}")
