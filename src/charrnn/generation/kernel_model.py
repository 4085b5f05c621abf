"""Generate from a GRU on the CPU through the C step kernels with numpy and ctypes only: no PyTorch here.

    model = KernelModel(arrays, config, vocab, dtype_for=lambda batch: "int8")
    print(model.generate("ROMEO:", length=200, seed=1)[0])

`arrays` is the run's state_dict as its safetensors file stores it ("embedding.weight",
"rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0", ... per layer,
"dense.weight", "dense.bias"), float32; `config` the run's ModelConfig (a GRU); `dtype_for(batch)` names
the precision ("fp32", "bf16" or "int8") a batch of that many rows generates in; `threads` the kernels'
threads (default: the CPUs this process may use; results never depend on it).

Why it equals charrnn.load(RUN) bit for bit: the weights are packed by kernels/packing.py and the input
table computed by packing.input_table, exactly as the PyTorch path's network.PackedWeights does, and the
same C functions step them (gru_model_step_*, as model/stepper.py's Stepper calls it). Each output is a dot
product summed in a fixed order, whatever the batch or thread count, so priming a prompt here (layer by
layer over the prompt, like forward() outside training) and stepping give the same logits, states and
text as CharModel at the same precision.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Mapping

import numpy as np

from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.generation import loop
from charrnn.kernels import build, packing
from charrnn.model import memory

KINDS = {"fp32": "f32", "bf16": "bf16", "int8": "i8"}  # precision name -> step.c's product type


def usable(config: ModelConfig) -> bool:
    """Whether KernelModel can generate from a model of this config here: a GRU, with the kernels built."""
    return config.cell == "gru" and build.available()


def checked_arrays(arrays: Mapping[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """The arrays a GRU of `config` needs, float32 and contiguous, each of the shape the config says."""
    shapes = memory.tensor_shapes(config)
    checked = {}
    for name, shape in shapes.items():
        if name not in arrays:
            raise CharRNNError(f"the weights have no {name}, which a {config.num_layers}-layer GRU needs")
        array = np.ascontiguousarray(arrays[name], dtype=np.float32)
        if array.shape != shape:
            raise CharRNNError(f"weight {name} is {array.shape}, but the model's config needs {shape}")
        checked[name] = array
    return checked


class KernelWeights:
    """A GRU's weights packed for one precision: the first layer's input table (vocab, 3H) fp32, per layer
    the packed input projection (None for the first) and recurrent weights, the packed output layer, and
    the void*[] of them all that gru_model_step reads."""

    def __init__(self, config: ModelConfig, precision: str, table: np.ndarray, layers: list, output: packing.Packed):
        self.config, self.precision, self.kind = config, precision, KINDS[precision]
        self.table, self.layers, self.output = table, layers, output
        addresses = []
        for input_projection, recurrent in layers:
            addresses += input_projection.pointers() if input_projection else [None] * 4
            addresses += recurrent.pointers()
        addresses += output.pointers()
        self.pointers = (ctypes.c_void_p * len(addresses))(*addresses)  # into the arrays self holds

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], config: ModelConfig, kind: str, table: np.ndarray | None = None
    ) -> KernelWeights:
        """Pack the run's arrays (see the module) for precision `kind` ("fp32", "bf16" or "int8"); `table`,
        packing.input_table of these arrays, is computed unless given (it is the same for every kind)."""
        if kind not in KINDS:
            raise CharRNNError(f"precision must be one of {', '.join(KINDS)}; got {kind!r}")
        a, suffix = checked_arrays(arrays, config), KINDS[kind]
        if table is None:
            table = packing.input_table(a["embedding.weight"], a["rnn.weight_ih_l0"], a["rnn.bias_ih_l0"])
        layers = []
        for k in range(config.num_layers):
            ih = packing.pack(a[f"rnn.weight_ih_l{k}"], a[f"rnn.bias_ih_l{k}"], suffix) if k else None
            layers.append((ih, packing.pack(a[f"rnn.weight_hh_l{k}"], a[f"rnn.bias_hh_l{k}"], suffix, 3, 16)))
        return cls(config, kind, table, layers, packing.pack(a["dense.weight"], a["dense.bias"], suffix))


class KernelBackend:
    """loop.Backend over KernelWeights: primes layer by layer over each prompt, steps the batch with
    gru_model_step on buffers reused from step to step (the returned state is one of them: it stays valid
    until the next step but one). Each generation uses its own backend; weights are shared."""

    def __init__(self, weights: KernelWeights, threads: int | None = None):
        self.weights, self.threads = weights, threads or packing.default_threads()
        self._kernel = getattr(build.library(), f"gru_model_step_{weights.kind}")
        self._batch, self._buffers = None, None

    @property
    def precision(self) -> str:
        return self.weights.precision

    def prime(self, prompts: list[np.ndarray], num_samples: int):
        config = self.weights.config
        return loop.prime_in_pieces(prompts, num_samples, (config.num_layers, config.hidden_size), self._prime_piece)

    def _prime_piece(self, ids: np.ndarray, state: np.ndarray):
        """One piece of a prompt at batch 1, layer by layer as forward() runs outside training; only the
        last position's logits are computed (each row's are independent of the others')."""
        weights, vocab = self.weights, self.weights.config.vocab_size
        if len(ids) and (ids.min() < 0 or ids.max() >= vocab):
            raise CharRNNError(f"character ids must be from 0 to {vocab - 1}; got {ids.tolist()[:20]}")
        x, new_state = weights.table[ids], np.empty_like(state)  # x: (time, 3H), the first layer's inputs
        for layer, (input_projection, recurrent) in enumerate(weights.layers):
            gi = packing.matvec(x, input_projection, self.threads) if layer else x
            hs = packing.gru_sequence(gi[:, None], state[layer], recurrent, self.threads)  # (time + 1, 1, H)
            x, new_state[layer] = hs[1:, 0], hs[-1]
        return packing.matvec(x[-1:], weights.output, self.threads), new_state

    def step(self, ids: np.ndarray, state: np.ndarray):
        config = self.weights.config
        batch = len(ids)
        self._ensure_buffers(batch)
        (state_a, state_b), gi, scratch, ids_buffer = self._buffers
        state = np.ascontiguousarray(state)  # the kernel reads raw rows
        out = state_b if state is state_a else state_a  # ping-pong: never overwrite the input state
        if state.shape != out.shape or state.dtype != np.float32:
            raise CharRNNError(f"state must be float32 {out.shape} for {batch} ids; got {state.dtype} {state.shape}")
        ids_buffer[:] = ids
        logits = np.empty((batch, config.vocab_size), dtype=np.float32)  # fresh: the caller keeps it
        if self._kernel(
            batch,
            config.num_layers,
            config.hidden_size,
            config.vocab_size,
            self.threads,
            ids_buffer.ctypes.data,
            self.weights.table.ctypes.data,
            self.weights.pointers,
            state.ctypes.data,
            out.ctypes.data,
            gi.ctypes.data,
            scratch.ctypes.data,
            logits.ctypes.data,
        ):
            raise CharRNNError(f"character ids must be from 0 to {config.vocab_size - 1}; got {ids.tolist()}")
        return logits, out

    def _ensure_buffers(self, batch: int) -> None:
        if self._batch == batch:
            return
        config = self.weights.config
        layers, hidden = config.num_layers, config.hidden_size
        with memory.allocating(f"the step buffers of {batch:,} samples", "lower --num-samples (num_samples)"):
            self._buffers = (
                tuple(np.empty((layers, batch, hidden), dtype=np.float32) for _ in range(2)),
                np.empty((batch, 3 * hidden), dtype=np.float32),
                packing.scratch(batch, hidden, self.weights.kind),
                np.zeros(batch, dtype=np.int64),
            )
        self._batch = batch

    def join(self, states: list[np.ndarray]) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate(states, axis=1))  # (layers, rows, hidden) -> all rows

    def take(self, state: np.ndarray, rows: list[int]) -> np.ndarray:
        return np.ascontiguousarray(state[:, rows])


class KernelModel(loop.Generator):
    """A GRU run's weights generating through the step kernels without PyTorch (see the module)."""

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        config: ModelConfig,
        vocab: Vocab,
        dtype_for: Callable[[int], str] | None = None,
        threads: int | None = None,
    ):
        if config.cell != "gru":
            raise CharRNNError(f"the step kernels generate from a GRU; this model is a {config.cell}")
        if not build.available():
            raise CharRNNError("generating without PyTorch needs the step kernels, which need a C compiler (gcc)")
        if len(vocab) != config.vocab_size:
            raise CharRNNError(f"the vocabulary has {len(vocab)} characters but the model has {config.vocab_size}")
        self.arrays, self.config, self.vocab = checked_arrays(arrays, config), config, vocab
        self._dtype_for = dtype_for or (lambda batch: "fp32")
        self.threads = threads or packing.default_threads()
        self._weights: dict[str, KernelWeights] = {}
        self._table: np.ndarray | None = None
        self._lock = threading.Lock()  # concurrent generations (the server) pack each precision once

    def dtype_for(self, batch: int) -> str:
        """The precision ("fp32", "bf16" or "int8") that generates a batch of this size."""
        precision = self._dtype_for(batch)
        if precision not in KINDS:
            raise CharRNNError(f"precision must be one of {', '.join(KINDS)}; got {precision!r}")
        return precision

    def weights(self, precision: str) -> KernelWeights:
        """The weights packed for `precision`, packed on first use and kept."""
        with self._lock:
            if precision not in self._weights:
                a = self.arrays
                if self._table is None:
                    self._table = packing.input_table(
                        a["embedding.weight"], a["rnn.weight_ih_l0"], a["rnn.bias_ih_l0"], self.threads
                    )
                self._weights[precision] = KernelWeights.from_arrays(a, self.config, precision, self._table)
            return self._weights[precision]

    def backend(self, batch: int) -> KernelBackend:
        return KernelBackend(self.weights(self.dtype_for(batch)), self.threads)

    def state_values(self) -> int:
        return self.config.num_layers * self.config.hidden_size
