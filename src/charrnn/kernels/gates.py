"""Training's fused GRU gate kernels (gates.c), called on PyTorch tensors.

Why: each GRU step does a dozen elementwise operations on (batch, hidden) tensors around its one
matrix product. As separate PyTorch calls they cost about half a training step on a 2-core CPU; fused
into one pass per step (forward) and one per step (backward) they cost a few percent.
"""

from __future__ import annotations

import torch

from charrnn.kernels import build


def usable(state: torch.Tensor, product_dtype: torch.dtype) -> bool:
    """Whether the kernels handle this case: fp32 state on CPU, fp32 or bf16 products."""
    return (
        state.dtype == torch.float32
        and state.device.type == "cpu"
        and product_dtype in (torch.float32, torch.bfloat16)
        and build.available()
    )


def _ptr(tensor: torch.Tensor | None):
    return None if tensor is None else tensor.data_ptr()


def _suffix(dtype: torch.dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "f32"


def gru_forward(gi, gh, h, h_out, h_low_out, rz, a, b, c) -> None:
    """See gates.c: every tensor contiguous on CPU, rows of (batch, ...)."""
    batch, hidden = h.shape
    (build.library().gru_forward_bf16 if gh.dtype == torch.bfloat16 else build.library().gru_forward_f32)(
        batch,
        hidden,
        torch.get_num_threads(),
        _ptr(gi),
        _ptr(gh),
        _ptr(h),
        _ptr(h_out),
        _ptr(h_low_out),
        _ptr(rz),
        _ptr(a),
        _ptr(b),
        _ptr(c),
    )


def gru_backward(dh, gy, gprev, a, b, c, rz, d_gi, d_gh) -> None:
    """See gates.c; gy (fp32) and gprev (product dtype) must be given, zeros where there is nothing to add."""
    batch, hidden = dh.shape
    getattr(build.library(), f"gru_backward_{_suffix(d_gh.dtype)}")(
        batch,
        hidden,
        torch.get_num_threads(),
        _ptr(dh),
        _ptr(gy),
        _ptr(gprev),
        _ptr(a),
        _ptr(b),
        _ptr(c),
        _ptr(rz),
        _ptr(d_gi),
        _ptr(d_gh),
    )


def transpose_into(src: torch.Tensor, dst: torch.Tensor) -> None:
    """dst (cols, rows) = src (rows, cols).t(), where dst may be a column block of a wider matrix whose
    rows are contiguous (dst.stride(1) == 1)."""
    rows, cols = src.shape
    getattr(build.library(), f"transpose_{_suffix(src.dtype)}")(
        rows, cols, torch.get_num_threads(), _ptr(src), _ptr(dst), dst.stride(0)
    )
