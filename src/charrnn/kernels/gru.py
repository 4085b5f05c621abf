"""A GRU sequence op for training and generation on CPU, with a hand-written backward pass.

Why not nn.GRU: on CPU its backward runs a small matrix product per step for the weight gradients and
it has no bf16 fast path. Here the per-step work is only what the recurrence forces — one
(batch, H) x (H, 3H) product forward and one backward — while the recurrent weight gradient becomes a
single large product over all steps, which runs near the CPU's peak (AMX / AVX512-BF16 for bf16).
Products whose weight is fixed for a whole sequence use oneDNN's pre-packed weights where PyTorch has
them (2.4x faster for the bf16 recurrent product on a Sapphire Rapids core; identical results).

Matrix products run in `dtype` (bf16 or fp32); gate arithmetic, the hidden state and gradients stay
fp32. The maths is PyTorch's GRU (Keras's reset_after=True GRU, the tutorial's):

    r = sigmoid(gi_r + gh_r)      z = sigmoid(gi_z + gh_z)      n = tanh(gi_n + r * gh_n)
    h' = (1 - z) * n + z * h      where gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh

All sequence tensors here are time-major, (time, batch, ...), so each step touches contiguous memory.
"""

from __future__ import annotations

import threading

import torch

from charrnn.kernels import gates, step


def _packing_works() -> bool:
    # Its own generator: drawing from the global one would shift dropout's random numbers in the process
    # that probes first, so a run resumed in a fresh process would differ from the uninterrupted one.
    generator = torch.Generator().manual_seed(0)
    try:
        w = torch.randn(6, 4, generator=generator).to(torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 2)
        x = torch.randn(2, 4, generator=generator).to(torch.bfloat16)
        return torch.equal(
            torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), torch.nn.functional.linear(x, w)
        )
    except Exception:  # older/newer torch without these internal ops, or no oneDNN
        return False


_PACKING = None


class Projection:
    """x -> x W^T + b for a weight fixed over many calls: packed once for oneDNN when that helps."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, batch: int):
        global _PACKING
        if _PACKING is None:
            _PACKING = _packing_works()
        self.weight = weight.detach().to(dtype).contiguous()  # (out, in)
        self.bias = None if bias is None else bias.detach().to(dtype)
        self.packed = None
        # Packing pays for bf16 on CPU; fp32 products are as fast or faster through MKL unpacked.
        if _PACKING and dtype == torch.bfloat16 and weight.device.type == "cpu" and batch > 1:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, batch)
        else:
            self.weight_t = self.weight.t().contiguous()  # (in, out): faster than the transposed view for fp32

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x W^T + b; `out` (same dtype) is used when the product can write into it."""
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if self.bias is None:
            return torch.mm(x, self.weight_t, out=out)
        return torch.addmm(self.bias, x, self.weight_t, out=out)


class Scratch:
    """Per-sequence (batch, ...) buffers for the PyTorch fallback of gru_step."""

    def __init__(self, like: torch.Tensor, batch: int, hidden: int, dtype: torch.dtype):
        self.gh_low = like.new_empty(batch, 3 * hidden, dtype=dtype)  # the recurrent product's output
        self.gh = like.new_empty(batch, 3 * hidden)
        self.rz = like.new_empty(batch, 2 * hidden)
        self.n = like.new_empty(batch, hidden)
        self.ones = like.new_ones(batch, hidden)
        self.one_minus_z = like.new_empty(batch, hidden)
        self.coefficients = (
            like.new_empty(batch, hidden),
            like.new_empty(batch, hidden),
            like.new_empty(batch, hidden),
        )


def gru_step(gi, h, h_low, project, h_out, h_low_out, scratch: Scratch, train=None, fused: bool | None = None) -> None:
    """One GRU step into caller-owned buffers: the new state goes to h_out (fp32) and h_low_out (the
    product dtype, the next step's product input); `train` = (rz, a, b, c) buffers receive r, z and the
    backward coefficients a = (1-z)(1-n^2), b = (h-n) z (1-z), c = r (1-r) gh_n.

    gi (batch, 3H) fp32 input projection; h (batch, H) fp32 state, h_low the same in the product dtype;
    project(h_low, out) gives h W_hh^T + b_hh. Training and generation both run this, so a seeded
    generation equals the straightforward re-run of the text at the same precision. `fused` (whether
    to use the C kernels) may be decided once by the caller; None decides here."""
    gh = project(h_low, scratch.gh_low)  # (batch, 3H) in the product dtype
    if fused if fused is not None else gates.usable(h, gh.dtype):
        gates.gru_forward(gi, gh, h, h_out, h_low_out, *(train or (scratch.rz, *scratch.coefficients)))
        return
    hidden = h.shape[1]
    rz, a, b, c = train or (scratch.rz, None, None, None)
    gh = scratch.gh.copy_(gh)  # one cast to fp32; everything below is contiguous fp32
    torch.add(gi[:, : 2 * hidden], gh[:, : 2 * hidden], out=rz).sigmoid_()
    r, z, n = rz[:, :hidden], rz[:, hidden:], scratch.n
    torch.addcmul(gi[:, 2 * hidden :], r, gh[:, 2 * hidden :], out=n).tanh_()
    torch.lerp(n, h, z, out=h_out)  # (1 - z) * n + z * h
    h_low_out.copy_(h_out)
    if train:
        one_minus_z = torch.sub(scratch.ones, z, out=scratch.one_minus_z)
        torch.addcmul(scratch.ones, n, n, value=-1, out=a).mul_(one_minus_z)
        torch.sub(h, n, out=b).mul_(z).mul_(one_minus_z)
        torch.addcmul(r, r, r, value=-1, out=c).mul_(gh[:, 2 * hidden :])


class Workspace:
    """Reusable sequence buffers. A training step needs several hundred MB of them; freshly allocated
    memory costs a page fault per 4 KB on first write, which made each step ~25% slower. Buffers are
    taken in forward and given back when backward has used them (never while anything else holds them)."""

    def __init__(self):
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, shape, dtype, device) -> torch.Tensor:
        key = (tuple(shape), dtype, str(device))
        with self._lock:
            pool = self._free.get(key)
            if pool:
                return pool.pop()
        return torch.empty(shape, dtype=dtype, device=device)

    def give(self, *tensors: torch.Tensor) -> None:
        with self._lock:
            for tensor in tensors:
                key = (tuple(tensor.shape), tensor.dtype, str(tensor.device))
                pool = self._free.setdefault(key, [])
                if len(pool) < 4:
                    pool.append(tensor)


WORKSPACE = Workspace()


class GRUSequence(torch.autograd.Function):
    """One GRU layer over a sequence, with its input projections either given, gi (time, batch, 3H), or
    looked up per character, table (vocab, 3H) at ids (time, batch) — the folded embedding, whose
    gradient is then a small index-add instead of a (time, batch, 3H) tensor handed back to autograd.
    Returns (y (time, batch, H), h_T (batch, H))."""

    @staticmethod
    def forward(ctx, gi, ids, table, h0, w_hh, b_hh, dtype):
        pooled_gi = gi is None
        if pooled_gi:
            steps, batch = ids.shape
            gi = WORKSPACE.take((steps, batch, table.shape[1]), table.dtype, table.device)
            torch.index_select(table, 0, ids.reshape(-1), out=gi.view(steps * batch, -1))
        steps, batch, three_h = gi.shape
        hidden = three_h // 3

        def take(*shape, dtype=gi.dtype):
            return WORKSPACE.take(shape, dtype, gi.device)

        project = Projection(w_hh, b_hh, dtype, batch)
        hs = gi.new_empty(steps + 1, batch, hidden)  # h_0 .. h_T; y is a view of it, so never pooled
        hs_low = take(steps + 1, batch, hidden, dtype=dtype)  # the same in the product dtype
        rz = take(steps, batch, 2 * hidden)
        a, b, c = take(steps, batch, hidden), take(steps, batch, hidden), take(steps, batch, hidden)
        scratch = Scratch(gi, batch, hidden, dtype)
        hs[0] = h0
        hs_low[0] = h0
        for t in range(steps):
            gru_step(gi[t], hs[t], hs_low[t], project, hs[t + 1], hs_low[t + 1], scratch, (rz[t], a[t], b[t], c[t]))
        if pooled_gi:
            WORKSPACE.give(gi)
        ctx.save_for_backward(ids, w_hh, hs_low, rz, a, b, c)
        ctx.dtype, ctx.vocab = dtype, None if table is None else table.shape[0]
        return hs[1:], hs[steps].clone()

    @staticmethod
    def backward(ctx, grad_y, grad_h_last):
        ids, w_hh, hs_low, rz, a, b, c = ctx.saved_tensors
        dtype = ctx.dtype
        steps, batch, hidden = a.shape
        project_back = Projection(w_hh.t(), None, dtype, batch)  # d_gh -> d_gh W_hh
        d_gi = (
            WORKSPACE.take((steps, batch, 3 * hidden), a.dtype, a.device)
            if ids is not None
            else a.new_empty(steps, batch, 3 * hidden)
        )  # handed to autograd when gi was given
        # d_gh per step feeds that step's product; its transpose, gathered step by step while it is in
        # cache, feeds the weight gradient: a (3H, time*batch) operand is 2x faster there than the
        # transposed view of (time*batch, 3H), and cheaper than transposing it all afterwards.
        d_gh = a.new_empty(batch, 3 * hidden, dtype=dtype)
        d_gh_t = WORKSPACE.take((3 * hidden, steps, batch), dtype, a.device)
        grad_y = None if grad_y is None else grad_y.contiguous()
        dh = grad_h_last.clone() if grad_h_last is not None else a.new_zeros(batch, hidden)
        if gates.usable(a, dtype):
            carried = a.new_zeros(batch, hidden, dtype=dtype)  # d_gh of the later step times W_hh
            no_grad_y = a.new_zeros(batch, hidden)
            for t in range(steps - 1, -1, -1):
                gy = no_grad_y if grad_y is None else grad_y[t]
                gates.gru_backward(dh, gy, carried, a[t], b[t], c[t], rz[t], d_gi[t], d_gh)
                carried = project_back(d_gh)
                gates.transpose_into(d_gh, d_gh_t[:, t])
            dh.add_(carried)
        else:
            d_n_r = a.new_empty(batch, hidden)
            for t in range(steps - 1, -1, -1):
                if grad_y is not None:
                    dh += grad_y[t]
                d_r, d_z, d_n = d_gi[t, :, :hidden], d_gi[t, :, hidden : 2 * hidden], d_gi[t, :, 2 * hidden :]
                torch.mul(dh, a[t], out=d_n)
                torch.mul(dh, b[t], out=d_z)
                torch.mul(d_n, c[t], out=d_r)
                d_gh.copy_(d_gi[t])
                torch.mul(d_n, rz[t, :, :hidden], out=d_n_r)
                d_gh[:, 2 * hidden :].copy_(d_n_r)  # the n block of d_gh is r * d_n
                dh.mul_(rz[t, :, hidden:]).add_(project_back(d_gh))
                d_gh_t[:, t].copy_(d_gh.t())
        flat_gh_t = d_gh_t.view(3 * hidden, steps * batch)
        grad_w = torch.mm(flat_gh_t, hs_low[:steps].view(steps * batch, hidden)).to(a.dtype)  # (3H, H), one product
        grad_b = torch.mm(flat_gh_t, flat_gh_t.new_ones(steps * batch, 1)).to(a.dtype)[
            :, 0
        ]  # 10x faster than a bf16 sum
        WORKSPACE.give(hs_low, rz, a, b, c, d_gh_t)
        if ids is None:
            return d_gi, None, None, dh, grad_w, grad_b, None
        grad_table = a.new_zeros(ctx.vocab, 3 * hidden).index_add_(0, ids.reshape(-1), d_gi.view(steps * batch, -1))
        WORKSPACE.give(d_gi)
        return None, None, grad_table, dh, grad_w, grad_b, None


@torch.no_grad()
def _gru_inference(gi, h0, w_hh, b_hh, dtype):
    steps, batch, three_h = gi.shape
    hidden = three_h // 3
    project = Projection(w_hh, b_hh, dtype, batch)
    hs = gi.new_empty(steps + 1, batch, hidden)
    h_low = gi.new_empty(2, batch, hidden, dtype=dtype)  # ping-pong between this step's and the next's
    scratch = Scratch(gi, batch, hidden, dtype)
    hs[0] = h0
    h_low[0] = h0
    for t in range(steps):
        gru_step(gi[t], hs[t], h_low[t % 2], project, hs[t + 1], h_low[(t + 1) % 2], scratch)
    return hs[1:], hs[steps].clone()


def gru_sequence(
    gi: torch.Tensor | None,
    h0: torch.Tensor,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor,
    dtype: torch.dtype,
    ids: torch.Tensor | None = None,
    table: torch.Tensor | None = None,
):
    """Run a GRU layer over time-major input projections gi (time, batch, 3H), or over table[ids] for
    ids (time, batch); returns (y (time, batch, H), h_T (batch, H))."""
    tensors = [t for t in (gi, table, h0, w_hh, b_hh) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        gi = None if gi is None else gi.contiguous()
        return GRUSequence.apply(gi, ids, table, h0.contiguous(), w_hh, b_hh, dtype)
    if gi is None:
        gi = torch.nn.functional.embedding(ids, table)
    return _gru_inference(gi.contiguous(), h0.contiguous(), w_hh, b_hh, dtype)


# -- generation: the step kernels (step.py) -------------------------------------------------------
class PackedLinear:
    """x (batch, n) fp32 -> x W^T + b (batch, rows) fp32 through step.matvec: products in `dtype`
    (fp32, bf16 or int8), each output a dot product in a fixed order, so a row's result does not depend
    on the other rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype):
        self.rows, self.n, self.dtype = weight.shape[0], weight.shape[1], dtype
        self.packed = step.pack(weight, bias, dtype)

    def __call__(
        self, x: torch.Tensor, out: torch.Tensor | None = None, scratch: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = x.shape[0]
        out = x.new_empty(batch, self.rows) if out is None else out
        scratch = step.scratch(batch, self.n, self.dtype) if scratch is None else scratch
        return step.matvec(x.contiguous(), self.packed, scratch, out)


class PackedGRULayer:
    """One GRU layer's recurrent weights for step.gru_layer_step: the step generation runs, and the
    one priming and scoring run outside training, so stepping a text equals re-running it."""

    def __init__(self, w_hh: torch.Tensor, b_hh: torch.Tensor, dtype: torch.dtype):
        self.hidden, self.dtype = w_hh.shape[1], dtype
        self.packed = step.pack(w_hh, b_hh, dtype, groups=3, multiple=16)

    def scratch(self, batch: int) -> torch.Tensor:
        return step.scratch(batch, self.hidden, self.dtype)

    def step(self, gi: torch.Tensor, h: torch.Tensor, h_out: torch.Tensor, scratch: torch.Tensor) -> None:
        """h_out (batch, H) from gi (batch, 3H) and h (batch, H), all fp32 and contiguous."""
        step.gru_layer_step(gi, h, self.packed, scratch, h_out)

    @torch.no_grad()
    def sequence(self, gi: torch.Tensor, h0: torch.Tensor):
        """gi (time, batch, 3H), h0 (batch, H) -> (y (time, batch, H), h_T (batch, H))."""
        gi = gi.contiguous()  # the kernel reads raw rows
        steps, batch, _ = gi.shape
        hs = gi.new_empty(steps + 1, batch, self.hidden)
        hs[0] = h0
        scratch = self.scratch(batch)
        for t in range(steps):
            self.step(gi[t], hs[t], hs[t + 1], scratch)
        return hs[1:], hs[steps].clone()
