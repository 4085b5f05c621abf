"""Generation's one-character step: the network advanced through the C step kernels, or PyTorch."""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from charrnn.errors import CharRNNError
from charrnn.kernels import step as stepkernels
from charrnn.kernels.gru import Projection, Scratch, gru_step
from charrnn.model import memory
from charrnn.model.network import CharRNN
from charrnn.model.precision import steps_on_kernels


class Stepper:
    """Advances a model one character at a time for generation.

    `step(ids (batch,), state) -> (logits (batch, vocab) fp32, state)`. For a GRU on CPU it runs the step
    kernels that forward() runs outside training (see PackedWeights), on buffers reused from step to
    step (the returned state is one of them: it stays valid until the next step but one). Weights are
    prepared once per (model, dtype) and shared; each generation uses its own Stepper, so concurrent
    generations never share buffers. Without a C compiler, a GRU steps through fastgru's PyTorch path."""

    def __init__(self, model: CharRNN, dtype: torch.dtype):
        self.model, self.dtype = model, dtype
        self.fast = model.config.cell == "gru" and model.dense.weight.device.type == "cpu"
        self.packed = steps_on_kernels(model, dtype)
        self._batch, self._buffers = None, None

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, state: torch.Tensor):
        if not self.fast:
            logits, state = self.model(ids[:, None], state, dtype=self.dtype)
            return logits[:, -1], state
        if self.packed:
            logits, state = self.step_numpy(ids.numpy(), state)
            return torch.from_numpy(logits), state
        self._ensure_buffers(ids.shape[0])
        return self._fallback_step(ids, state.contiguous())

    def step_numpy(self, ids: np.ndarray, state: torch.Tensor):
        """step() for ids (batch,) int64 as numpy, returning logits as numpy: generation's loop, without
        the tensor conversions that cost a batch-1 step as much as its products."""
        if not self.packed:
            logits, state = self.step(torch.from_numpy(ids), state)
            return logits.numpy(), state
        self._ensure_buffers(len(ids))
        pointers, (state_a, state_b), gi, scratch, ids_buffer, ids_pointer = self._buffers
        if not state.is_contiguous():  # the kernel reads raw rows
            state = state.contiguous()
        out = state_b if state is state_a else state_a  # ping-pong: never overwrite the input state
        if state.shape != out.shape or state.dtype != torch.float32:
            raise CharRNNError(
                f"state must be float32 {tuple(out.shape)} for {len(ids)} ids; got {state.dtype} {tuple(state.shape)}"
            )
        ids_buffer[:] = ids
        config = self.model.config
        logits = torch.empty(len(ids), config.vocab_size)  # (batch, vocab), fresh: the caller keeps it
        if self._kernel(
            len(ids),
            config.num_layers,
            config.hidden_size,
            config.vocab_size,
            torch.get_num_threads(),
            ids_pointer,
            self._table,
            pointers,
            state.data_ptr(),
            out.data_ptr(),
            gi,
            scratch,
            logits.data_ptr(),
        ):
            raise CharRNNError(f"character ids must be from 0 to {config.vocab_size - 1}; got {ids.tolist()}")
        return logits.numpy(), out

    def _ensure_buffers(self, batch: int) -> None:
        if self._batch != batch:
            with memory.allocating(f"the step buffers of {batch:,} samples", "lower --num-samples (num_samples)"):
                self._buffers = self._packed_buffers(batch) if self.packed else self._fallback_buffers(batch)
            self._batch = batch

    def _packed_buffers(self, batch: int):
        weights = self.model.packed_weights(self.dtype)
        config = self.model.config
        addresses = []
        for input_projection, recurrent in weights.layers:
            addresses += input_projection.packed.pointers() if input_projection else [None] * 4
            addresses += recurrent.packed.pointers()
        addresses += weights.output.packed.pointers()
        pointers = (ctypes.c_void_p * len(addresses))(*addresses)
        states = tuple(torch.empty(config.num_layers, batch, config.hidden_size) for _ in range(2))
        gi = torch.empty(batch, 3 * config.hidden_size)
        scratch = weights.layers[0][1].scratch(batch)
        ids = np.zeros(batch, dtype=np.int64)
        # The kernel gets raw pointers: keep what they point into alive as long as the buffers.
        self._kernel, self._table = stepkernels.model_step(self.dtype), weights.table.data_ptr()
        self._keep = (weights, gi, scratch)
        return pointers, states, gi.data_ptr(), scratch.data_ptr(), ids, ids.ctypes.data

    def _fallback_buffers(self, batch: int):
        model, dtype, hidden, layers = (
            self.model,
            self.dtype,
            self.model.config.hidden_size,
            self.model.config.num_layers,
        )

        @torch.no_grad()
        def build():
            projections = [
                (Projection(w_ih, b_ih, dtype, batch), Projection(w_hh, b_hh, dtype, batch))
                for w_ih, w_hh, b_ih, b_hh in map(model.layer_weights, range(layers))
            ]
            return model.input_table(), projections, Projection(model.dense.weight, model.dense.bias, dtype, batch)

        # Only bf16's oneDNN-packed weights depend on the batch: fp32's serve every size, so a server whose
        # batch changes size every few steps does not prepare them again each time.
        weights = model.prepared(("fallback", dtype, batch if dtype == torch.bfloat16 else 1), build)

        def new(*shape, dtype=torch.float32):
            return torch.empty(*shape, dtype=dtype)

        return (
            weights,
            new(batch, hidden, dtype=dtype),
            new(batch, hidden, dtype=dtype),
            new(layers, batch, hidden),
            new(layers, batch, hidden),
            Scratch(new(1), batch, hidden, dtype),
            new(batch, 3 * hidden),
        )

    def _fallback_step(self, ids: torch.Tensor, state: torch.Tensor):
        (table, layers, output), h_low, h_low_next, state_a, state_b, scratch, gi = self._buffers
        out = state_b if state is state_a else state_a
        torch.index_select(table, 0, ids, out=gi)  # (batch, 3H)
        for layer, (input_projection, recurrent_projection) in enumerate(layers):
            if layer:
                gi = input_projection(out[layer - 1].to(self.dtype)).float()
            h_low.copy_(state[layer])
            gru_step(gi, state[layer], h_low, recurrent_projection, out[layer], h_low_next, scratch, fused=False)
        return output(out[-1].to(self.dtype)).float(), out  # (batch, vocab)
