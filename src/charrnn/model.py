"""The model: Embedding -> GRU/LSTM/RNN -> Dense, with the recurrent state passed in and out.

`forward(ids, state) -> (logits, state)` is used both for training (whole sequences, state None) and
for priming generation, so there is one module and one set of weights; `Stepper` advances it one
character at a time for generation. The state is always one tensor (layers * states_per_layer, batch,
hidden): LSTM stacks h over c, which keeps batching, sampling and export code independent of the cell.

Speed (see bench/): on CPU a GRU runs through `fastgru` — the embedding is folded into the first input
projection (a per-character table of E W_ih^T + b_ih), matrix products run in `compute_dtype` (bf16 where
the CPU has native bf16), gate arithmetic and the state stay fp32. Other cells, and CUDA, use PyTorch's
RNN modules under autocast. The parameters are nn.GRU's either way, so checkpoints do not depend on it.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import cpu
from .config import GENERATION_PRECISIONS, PRECISIONS, ModelConfig
from .data import eval_batches
from .errors import CharRNNError
from . import stepkernels
from .fastgru import PackedGRULayer, PackedLinear, Projection, Scratch, gru_sequence, gru_step

cpu.guard_isa()  # before any oneDNN product: caps oneDNN below AMX where AMX is advertised but faults

_PREPARE_LOCK = threading.Lock()
_RNN_CLASSES = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 matrix products are fast here (AVX512-BF16/AMX on CPU, bf16 tensor cores on CUDA)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    supported = lambda name: getattr(torch.cpu, name, lambda: False)()
    return supported("_is_avx512_bf16_supported") or (supported("_is_amx_tile_supported") and cpu.amx_usable())


def bf16_trains_faster(device: torch.device) -> bool:
    """Whether training's bf16 products beat fp32 here: bf16 tensor cores, or AMX tiles on CPU. Measured
    (bench/speed.py, README Speed): the tutorial's step took 268 ms in bf16 against 761 ms in fp32 on a
    Xeon with AMX, but 930 ms against 700 ms on one whose AMX faults (AVX512-BF16 products only)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()) and cpu.amx_usable()


def int8_native(device: torch.device) -> bool:
    """Whether generation's int8 step kernels run at full speed here: AVX512-VNNI integer dot products."""
    return device.type == "cpu" and "avx512_vnni" in cpu.cpu_flags() and stepkernels.usable(torch.int8)


def steps_on_kernels(model: "CharRNN", dtype: torch.dtype) -> bool:
    """Whether generation steps `model` in `dtype` through the step kernels: a GRU on CPU, with them built."""
    return model.config.cell == "gru" and model.dense.weight.device.type == "cpu" and stepkernels.usable(dtype)


def resolve_precision(name: str, device: torch.device, generation: bool = False) -> torch.dtype:
    """auto -> bf16 where it is the faster here (training: bf16_trains_faster; generation: bf16_native), else
    fp32. `generation` also allows int8 (the step kernels' quantised products; training has no int8)."""
    allowed = GENERATION_PRECISIONS if generation else PRECISIONS
    if name not in allowed:
        raise CharRNNError(f"precision must be one of {', '.join(allowed)}; got {name!r}")
    if name == "auto":
        return torch.bfloat16 if (bf16_native(device) if generation else bf16_trains_faster(device)) else torch.float32
    if name == "int8":
        if device.type != "cpu" or not stepkernels.usable(torch.int8):
            raise CharRNNError("precision int8 runs on the CPU step kernels, which need a C compiler (gcc) here; "
                               "use --precision bf16 or fp32")
        return torch.int8
    return torch.bfloat16 if name == "bf16" else torch.float32


def precision_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.int8: "int8"}.get(dtype, "fp32")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharRNNError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise CharRNNError(f"device must be auto, cpu or cuda; got {name!r}")
    return torch.device(name)


@torch.inference_mode()
def evaluate_loss(model: CharRNN, ids: np.ndarray, seq_len: int, batch_size: int) -> float:
    """Mean cross-entropy (nats/char) over `ids`, chunked like training, state reset per chunk."""
    was_training = model.training
    model.eval()
    device = model.dense.weight.device
    total, count = 0.0, 0
    for inputs, targets in eval_batches(ids, seq_len, batch_size):
        logits, _ = model(inputs.to(device))
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().to(device), reduction="sum").item()
        count += targets.numel()
    model.train(was_training)
    if count == 0:
        raise CharRNNError("evaluation text is shorter than two characters; nothing to score")
    return total / count


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.rnn = _RNN_CLASSES[config.cell](
            config.embedding_size,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            # torch applies this between layers only; with one layer it would warn and do nothing.
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.dense = nn.Linear(config.hidden_size, config.vocab_size)
        self.compute_dtype = torch.float32  # dtype of the matrix products; see resolve_precision

    @property
    def states_per_layer(self) -> int:
        return 2 if self.config.cell == "lstm" else 1

    def initial_state(self, batch_size: int, device=None) -> torch.Tensor:
        """Zeros, (layers * states_per_layer, batch, hidden), fp32: the state before any character."""
        return torch.zeros(self.config.num_layers * self.states_per_layer, batch_size, self.config.hidden_size,
                           device=device or self.dense.weight.device)

    def layer_weights(self, layer: int):
        """(w_ih, w_hh, b_ih, b_hh) of one recurrent layer."""
        return tuple(getattr(self.rnn, f"{kind}_l{layer}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def input_table(self, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """The first layer's input projection of every character, (vocab, 3H) fp32: the embedding folded
        into it. Training (for large batches) and generation both use this one computation. `embedding`
        (vocab, E) replaces the embedding weights (training passes them with embedding dropout applied)."""
        w_ih, _, b_ih, _ = self.layer_weights(0)
        return torch.addmm(b_ih, self.embedding.weight if embedding is None else embedding, w_ih.t())

    def _embedding_weights(self) -> torch.Tensor:
        """(vocab, E): in training with embedding_dropout, whole characters' rows dropped and the rest
        scaled by 1/keep, one mask per batch (Gal & Ghahramani; AWD-LSTM's embedded_dropout)."""
        weight, p = self.embedding.weight, self.config.embedding_dropout
        if not self.training or p == 0:
            return weight
        return weight * weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p).div_(1 - p)

    def _recurrent_weights(self, w_hh: torch.Tensor) -> torch.Tensor:
        """(3H, H) hidden-to-hidden weights; in training with weight_drop, DropConnect: each weight
        zeroed with probability weight_drop (the rest scaled), one mask per batch shared by every time
        step (AWD-LSTM's WeightDrop). The mask multiplies the parameter, so gradients reach it masked."""
        p = self.config.weight_drop
        if not self.training or p == 0:
            return w_hh
        return w_hh * w_hh.new_empty(w_hh.shape).bernoulli_(1 - p).div_(1 - p)

    def folds_embedding(self, tokens: int) -> bool:
        # The folded table costs vocab x embedding x 3H; the direct projection tokens x embedding x 3H.
        return self.config.vocab_size * 4 <= tokens

    def forward(self, ids: torch.Tensor, state: torch.Tensor | None = None, dtype: torch.dtype | None = None):
        """ids (batch, time) int64 -> logits (batch, time, vocab) fp32 and the new state.
        `dtype` overrides `compute_dtype` for this call."""
        dtype = dtype or self.compute_dtype
        if self.config.cell == "gru" and ids.device.type == "cpu":
            return self._gru_forward(ids, state, dtype)
        low = dtype == torch.bfloat16
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=low):
            x = F.embedding(ids, self._embedding_weights())  # (batch, time, embedding)
            rnn = self._rnn_with_dropped_weights()
            if self.config.cell == "lstm":
                hc = None if state is None else tuple(s.contiguous() for s in state.chunk(2, dim=0))
                y, (h, c) = rnn(x, hc)
                new_state = torch.cat([h, c], dim=0)
            else:
                y, new_state = rnn(x, state)  # y: (batch, time, hidden)
            logits = self.dense(self.dropout(y))  # (batch, time, vocab)
        return logits.float(), new_state.float()

    def _gru_forward(self, ids: torch.Tensor, state: torch.Tensor | None, dtype: torch.dtype):
        batch, steps = ids.shape
        if state is None:
            state = self.initial_state(batch, ids.device)
        if not (torch.is_grad_enabled() or self.training) and state.dtype == torch.float32 and stepkernels.usable(dtype):
            return self._packed_forward(ids, state, dtype)
        time_major = ids.t()  # (time, batch): the recurrence walks time, so keep each step contiguous
        embedding = self._embedding_weights()  # (vocab, E), rows dropped in training
        x, finals = None, []
        for layer in range(self.config.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(layer)
            w_hh = self._recurrent_weights(w_hh)  # gru_sequence takes it as a tensor: the mask's gradient flows
            if layer == 0 and self.folds_embedding(batch * steps):
                table = self.input_table(embedding)
                x, final = gru_sequence(None, state[layer], w_hh, b_hh, dtype, ids=time_major, table=table)
            else:
                inputs = F.embedding(time_major, embedding) if layer == 0 else self._locked_dropout(x)
                # Outside training the first layer's projection stays fp32, like the folded table that
                # generation steps with, so priming and stepping compute the same inputs.
                low = dtype if layer or torch.is_grad_enabled() else torch.float32
                gi = F.linear(inputs.to(low), w_ih.to(low), b_ih.to(low)).float()  # (time, batch, 3H)
                x, final = gru_sequence(gi, state[layer], w_hh, b_hh, dtype)  # x: (time, batch, hidden)
            finals.append(final)
        logits = F.linear(self._locked_dropout(x).to(dtype), self.dense.weight.to(dtype), self.dense.bias.to(dtype))
        return logits.float().transpose(0, 1), torch.stack(finals)  # (batch, time, vocab)

    def prepared(self, key: tuple, build):
        """Weights laid out for generation: build() once per key, reused until a parameter changes (in-place
        updates bump their versions). Shared by concurrent generations (the server)."""
        cache = self.__dict__.setdefault("_prepared_weights", {})
        key = (*key, tuple(p._version for p in self.parameters()))
        with _PREPARE_LOCK:
            if key not in cache:
                if len(cache) > 8:
                    cache.clear()
                cache[key] = build()
            return cache[key]

    def packed_weights(self, dtype: torch.dtype) -> "PackedWeights":
        """The weights for generation's step kernels (one layout for every batch size)."""
        return self.prepared(("packed", dtype), lambda: PackedWeights(self, dtype))

    def _packed_forward(self, ids: torch.Tensor, state: torch.Tensor, dtype: torch.dtype):
        """forward() outside training, through the step kernels: every product a fixed-order dot product
        per row, so re-running a text gives exactly the logits and states that stepping through it gave."""
        weights = self.packed_weights(dtype)
        batch, steps = ids.shape
        x = weights.table[ids.t().contiguous()]  # (time, batch, 3H): the first layer's input projections
        finals = []
        for layer, (input_projection, recurrent) in enumerate(weights.layers):
            if layer:
                x = input_projection(x.view(steps * batch, -1)).view(steps, batch, -1)
            x, final = recurrent.sequence(x, state[layer].contiguous())  # (time, batch, H)
            finals.append(final)
        logits = weights.output(x.reshape(steps * batch, -1)).view(steps, batch, -1)
        return logits.transpose(0, 1), torch.stack(finals)  # (batch, time, vocab)

    def _rnn_with_dropped_weights(self):
        """self.rnn, or (training with weight_drop) a call of it with every layer's weight_hh masked:
        torch.func.functional_call swaps the masked tensors in for this call only."""
        if not self.training or self.config.weight_drop == 0:
            return self.rnn
        dropped = {f"weight_hh_l{k}": self._recurrent_weights(self.layer_weights(k)[1]) for k in range(self.config.num_layers)}
        return lambda *args: torch.func.functional_call(self.rnn, dropped, args)

    def _locked_dropout(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout with one mask per sequence and unit, shared by every time step (x: (time, batch, H)).
        The variational dropout that suits RNNs, and 100x fewer random numbers than a mask per element,
        which on CPU cost more than the rest of a small model's step."""
        if not self.training or self.config.dropout == 0:
            return x
        keep = 1.0 - self.config.dropout
        return x * x.new_empty(1, x.shape[1], x.shape[2]).bernoulli_(keep).div_(keep)


class PackedWeights:
    """A GRU model's weights for the step kernels: the first layer's per-character input table (vocab, 3H)
    fp32, per layer (input projection or None for the first, recurrent layer), and the output layer."""

    @torch.no_grad()
    def __init__(self, model: CharRNN, dtype: torch.dtype):
        self.table = model.input_table().contiguous()
        self.layers = []
        for layer in range(model.config.num_layers):
            w_ih, w_hh, b_ih, b_hh = model.layer_weights(layer)
            self.layers.append((PackedLinear(w_ih, b_ih, dtype) if layer else None, PackedGRULayer(w_hh, b_hh, dtype)))
        self.output = PackedLinear(model.dense.weight, model.dense.bias, dtype)


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
            raise CharRNNError(f"state must be float32 {tuple(out.shape)} for {len(ids)} ids; got {state.dtype} {tuple(state.shape)}")
        ids_buffer[:] = ids
        config = self.model.config
        logits = torch.empty(len(ids), config.vocab_size)  # (batch, vocab), fresh: the caller keeps it
        if self._kernel(len(ids), config.num_layers, config.hidden_size, config.vocab_size, torch.get_num_threads(),
                        ids_pointer, self._table, pointers, state.data_ptr(), out.data_ptr(), gi, scratch, logits.data_ptr()):
            raise CharRNNError(f"character ids must be from 0 to {config.vocab_size - 1}; got {ids.tolist()}")
        return logits.numpy(), out

    def _ensure_buffers(self, batch: int) -> None:
        if self._batch != batch:
            self._batch = batch
            self._buffers = self._packed_buffers(batch) if self.packed else self._fallback_buffers(batch)

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
        model, dtype, hidden, layers = self.model, self.dtype, self.model.config.hidden_size, self.model.config.num_layers

        @torch.no_grad()
        def build():
            projections = [(Projection(w_ih, b_ih, dtype, batch), Projection(w_hh, b_hh, dtype, batch))
                           for w_ih, w_hh, b_ih, b_hh in map(model.layer_weights, range(layers))]
            return model.input_table(), projections, Projection(model.dense.weight, model.dense.bias, dtype, batch)

        # Only bf16's oneDNN-packed weights depend on the batch: fp32's serve every size, so a server whose
        # batch changes size every few steps does not prepare them again each time.
        weights = model.prepared(("fallback", dtype, batch if dtype == torch.bfloat16 else 1), build)
        new = lambda *shape, dtype=torch.float32: torch.empty(*shape, dtype=dtype)
        return (weights, new(batch, hidden, dtype=dtype), new(batch, hidden, dtype=dtype), new(layers, batch, hidden),
                new(layers, batch, hidden), Scratch(new(1), batch, hidden, dtype), new(batch, 3 * hidden))

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


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summary(model: CharRNN) -> str:
    """A Keras-style table of layers, output shapes and parameter counts."""
    cfg = model.config
    layer_name = cfg.cell if cfg.num_layers == 1 else f"{cfg.cell} x{cfg.num_layers}"
    rows = [
        ("embedding (Embedding)", f"(batch, time, {cfg.embedding_size})", count_parameters(model.embedding)),
        (f"{layer_name} ({cfg.cell.upper()})", f"(batch, time, {cfg.hidden_size})", count_parameters(model.rnn)),
        ("dense (Linear)", f"(batch, time, {cfg.vocab_size})", count_parameters(model.dense)),
    ]
    widths = (28, 26, 12)
    rule = "-" * sum(widths)
    lines = [
        f'Model: "charrnn" ({cfg.cell}, vocabulary {cfg.vocab_size})',
        rule,
        f"{'Layer (type)':<{widths[0]}}{'Output Shape':<{widths[1]}}{'Param #':>{widths[2]}}",
        "=" * sum(widths),
    ]
    for name, shape, params in rows:
        lines.append(f"{name:<{widths[0]}}{shape:<{widths[1]}}{params:>{widths[2]},}")
    lines += ["=" * sum(widths), f"Total params: {count_parameters(model):,}", f"Trainable params: {count_parameters(model):,}", rule]
    return "\n".join(lines)
