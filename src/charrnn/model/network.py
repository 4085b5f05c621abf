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

import threading

import torch
import torch.nn.functional as F
from torch import nn

from charrnn.config import ModelConfig
from charrnn.kernels import cpu, packing
from charrnn.kernels import step as stepkernels
from charrnn.kernels.gru import PackedGRULayer, PackedLinear, gru_sequence
from charrnn.model import memory

cpu.guard_isa()  # before any oneDNN product: caps oneDNN below AMX where AMX is advertised but faults


_PREPARE_LOCK = threading.Lock()


_RNN_CLASSES = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        memory.check_model(config)
        with memory.allocating(f"the weights of {memory.describe(config)}", f"lower {memory.MODEL_SETTINGS}"):
            self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
            self.rnn = _RNN_CLASSES[config.cell](
                config.embedding_size,
                config.hidden_size,
                num_layers=config.num_layers,
                batch_first=True,
                # torch applies this between layers only; with one layer it would warn and do nothing.
                dropout=config.dropout if config.num_layers > 1 else 0.0,
            )
            self.dense = nn.Linear(config.hidden_size, config.vocab_size)
        self.dropout = nn.Dropout(config.dropout)
        self.compute_dtype = torch.float32  # dtype of the matrix products; see resolve_precision

    @property
    def states_per_layer(self) -> int:
        return 2 if self.config.cell == "lstm" else 1

    def initial_state(self, batch_size: int, device=None) -> torch.Tensor:
        """Zeros, (layers * states_per_layer, batch, hidden), fp32: the state before any character."""
        return torch.zeros(
            self.config.num_layers * self.states_per_layer,
            batch_size,
            self.config.hidden_size,
            device=device or self.dense.weight.device,
        )

    def layer_weights(self, layer: int):
        """(w_ih, w_hh, b_ih, b_hh) of one recurrent layer."""
        return tuple(getattr(self.rnn, f"{kind}_l{layer}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def input_table(self, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """The first layer's input projection of every character, (vocab, 3H) fp32: the embedding folded
        into it, for training (large batches) and the PyTorch fallback without the step kernels; generation
        on the kernels uses packing.input_table instead (see PackedWeights). `embedding` (vocab, E) replaces
        the embedding weights (training passes them with embedding dropout applied)."""
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

    def forward(
        self,
        ids: torch.Tensor,
        state: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
        fold: bool | None = None,
    ):
        """ids (batch, time) int64 -> logits (batch, time, vocab) fp32 and the new state.
        `dtype` overrides `compute_dtype` for this call. `fold` overrides folds_embedding for a GRU on CPU:
        a text run in pieces passes the whole text's choice, so it computes what one pass would."""
        dtype = dtype or self.compute_dtype
        if self.config.cell == "gru" and ids.device.type == "cpu":
            return self._gru_forward(ids, state, dtype, fold)
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

    def _gru_forward(self, ids: torch.Tensor, state: torch.Tensor | None, dtype: torch.dtype, fold: bool | None):
        batch, steps = ids.shape
        fold = self.folds_embedding(batch * steps) if fold is None else fold
        if state is None:
            state = self.initial_state(batch, ids.device)
        if (
            not (torch.is_grad_enabled() or self.training)
            and state.dtype == torch.float32
            and stepkernels.usable(dtype)
        ):
            return self._packed_forward(ids, state, dtype)
        time_major = ids.t()  # (time, batch): the recurrence walks time, so keep each step contiguous
        embedding = self._embedding_weights()  # (vocab, E), rows dropped in training
        x, finals = None, []
        for layer in range(self.config.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(layer)
            w_hh = self._recurrent_weights(w_hh)  # gru_sequence takes it as a tensor: the mask's gradient flows
            if layer == 0 and fold:
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

    def packed_weights(self, dtype: torch.dtype) -> PackedWeights:
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
        dropped = {
            f"weight_hh_l{k}": self._recurrent_weights(self.layer_weights(k)[1]) for k in range(self.config.num_layers)
        }
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
    fp32, per layer (input projection or None for the first, recurrent layer), and the output layer.
    Table and packing are kernels.packing's, which generation without PyTorch (generation/kernel_model.py)
    computes too: the two paths give the same logits bit for bit."""

    @torch.no_grad()
    def __init__(self, model: CharRNN, dtype: torch.dtype):
        w_ih, _, b_ih, _ = (w.detach().float().numpy() for w in model.layer_weights(0))
        self.table = torch.from_numpy(packing.input_table(model.embedding.weight.detach().float().numpy(), w_ih, b_ih))
        self.layers = []
        for layer in range(model.config.num_layers):
            w_ih, w_hh, b_ih, b_hh = model.layer_weights(layer)
            self.layers.append((PackedLinear(w_ih, b_ih, dtype) if layer else None, PackedGRULayer(w_hh, b_hh, dtype)))
        self.output = PackedLinear(model.dense.weight, model.dense.bias, dtype)
