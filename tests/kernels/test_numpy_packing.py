"""kernels/packing.py packs with numpy alone: the same bytes PyTorch's packing gave (the reference below
is step.pack as it was written in PyTorch), for every kind, group layout and awkward size; and step.pack,
now a wrapper over it, hands the PyTorch path those very bytes."""

import numpy as np
import pytest
import torch

from charrnn.kernels import build, packing, step


@torch.no_grad()
def torch_reference_pack(weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype, groups: int, multiple: int):
    rows, n = weight.shape[0] // groups, weight.shape[1]
    rows_pad, n_pad = -(-rows // multiple) * multiple, packing.pad_width(n, step.SUFFIXES[dtype])
    w = weight.float().reshape(groups, rows, n)
    packed = torch.zeros(groups, rows_pad, n_pad, dtype=dtype)
    padded_bias = torch.zeros(groups, rows_pad)
    padded_bias[:, :rows] = bias.float().reshape(groups, rows)
    scale = corr = None
    if dtype == torch.int8:
        level = w.abs().amax(dim=2).clamp_min(1e-30) / 127
        q = torch.round(w / level[..., None]).clamp(-127, 127)
        packed[:, :rows, :n] = q.to(torch.int8)
        scale, corr = torch.zeros(groups, rows_pad), torch.zeros(groups, rows_pad, dtype=torch.int32)
        scale[:, :rows] = level / 127
        corr[:, :rows] = 128 * q.sum(dim=2).to(torch.int32)
    else:
        packed[:, :rows, :n] = w.to(dtype)
    return packed, padded_bias, scale, corr


def as_bytes(value) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.view(torch.uint16) if value.dtype == torch.bfloat16 else value
        value = value.numpy()
    return np.ascontiguousarray(value).tobytes()


def weights(rows: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, n)) * rng.uniform(0.01, 3.0, (rows, 1))).astype(np.float32)
    w[0, : min(n, 3)] = [0.5, -0.5, 2.5][: min(n, 3)]  # exact halves: rounding ties
    if rows > 2:
        w[1] = 0.0  # an all-zero row: the int8 step's floor
        w[2, 0] = np.float32(1.0) + np.float32(2.0**-8)  # halfway between two bf16 values
    return w, rng.standard_normal(rows).astype(np.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize(
    "rows, n, groups, multiple",
    [
        (1, 1, 1, 8),
        (7, 5, 1, 8),
        (30, 33, 1, 8),
        (65, 100, 1, 8),
        (3 * 13, 13, 3, 16),
        (3 * 40, 70, 3, 16),
        (3 * 17, 129, 3, 16),
    ],
)
def test_numpy_packing_equals_pytorch_byte_for_byte(dtype, rows, n, groups, multiple):
    w, b = weights(rows, n, seed=rows * 1000 + n)
    kind = step.SUFFIXES[dtype]
    ours = packing.pack(w, b, kind, groups, multiple)
    reference = torch_reference_pack(torch.from_numpy(w), torch.from_numpy(b), dtype, groups, multiple)
    wrapped = step.pack(torch.from_numpy(w), torch.from_numpy(b), dtype, groups, multiple)
    wrapped_arrays = (wrapped.weight, wrapped.bias, wrapped.scale, wrapped.corr)
    for got, via_torch, want in zip((ours.weight, ours.bias, ours.scale, ours.corr), wrapped_arrays, reference):
        assert as_bytes(got) == as_bytes(want)
        assert as_bytes(via_torch) == as_bytes(want)
    assert wrapped.weight.dtype == dtype and (ours.rows, ours.n) == (wrapped.rows, wrapped.n) == (rows // groups, n)
    assert ours.weight.shape == (groups, -(-(rows // groups) // multiple) * multiple, packing.pad_width(n, kind))


def test_bf16_rounding_matches_pytorch_on_every_kind_of_value():
    special = np.array([0.0, -0.0, 1e-40, -1e-45, 3.3895314e38, -3.4e38, np.inf, -np.inf], dtype=np.float32)
    ties = (np.arange(1, 200, dtype=np.uint32) << 16 | 0x8000).view(np.float32)  # exactly halfway, both parities
    values = np.concatenate([special, ties, np.random.default_rng(0).standard_normal(10_000).astype(np.float32)])
    want = torch.from_numpy(values).to(torch.bfloat16).view(torch.uint16).numpy()
    assert np.array_equal(packing.to_bf16(values), want)
    nan = int(packing.to_bf16(np.array([np.nan], np.float32))[0])
    assert nan & 0x7F80 == 0x7F80 and nan & 0x7F  # a NaN (torch's own paths differ on its sign and payload)


def test_the_input_table_is_the_fixed_order_product():
    if not build.available():
        pytest.skip("no C compiler here: the step kernels are unavailable")
    rng = np.random.default_rng(1)
    embedding = rng.standard_normal((23, 13)).astype(np.float32)
    w_ih, b_ih = rng.standard_normal((3 * 20, 13)).astype(np.float32), rng.standard_normal(60).astype(np.float32)
    table = packing.input_table(embedding, w_ih, b_ih)
    assert table.shape == (23, 60) and table.dtype == np.float32
    np.testing.assert_allclose(
        table, embedding.astype(np.float64) @ w_ih.T.astype(np.float64) + b_ih, rtol=1e-5, atol=1e-5
    )
    for threads in (1, 2, 3):  # one row at a time or all together, any thread count: the same bits
        assert np.array_equal(packing.input_table(embedding, w_ih, b_ih, threads), table)
        assert np.array_equal(packing.input_table(embedding[5:6], w_ih, b_ih, threads)[0], table[5])
