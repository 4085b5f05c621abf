"""The Python API for a trained model: `charrnn.load(RUN)` -> CharModel with generate / stream / evaluate.

The CLI (and the server) call exactly these methods. Generation primes each distinct prompt once, then
samples all rows of the batch together, carrying the recurrent state one character at a time.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charrnn.config import GENERATION_DEVICE, ModelConfig, TrainConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.generation import loop
from charrnn.model import memory
from charrnn.model import scoring as evaluation
from charrnn.model.network import CharRNN
from charrnn.model.precision import generation_dtype, precision_name, resolve_device, resolve_precision
from charrnn.model.scoring import Protocols
from charrnn.model.stepper import Stepper
from charrnn.model.summary import count_parameters
from charrnn.model.weights import load_run_checkpoint
from charrnn.storage.run import epoch_record, load_config


class CharModel(loop.Generator):
    """A trained model with its vocabulary, ready to generate."""

    def __init__(
        self,
        model: CharRNN,
        vocab: Vocab,
        train_config: TrainConfig | None = None,
        corpus: dict[str, Any] | None = None,
        run_dir: Path | None = None,
        precision: str = "auto",
        checkpoint: dict[str, Any] | None = None,
    ):
        """`checkpoint`: the weight file loaded, {"file", "epoch", "step"} (weights.load_run_checkpoint)."""
        self.model = model.eval()
        resolve_precision(precision, self.device, generation=True)  # validates
        self.precision = precision
        self.vocab = vocab
        self.config: ModelConfig = model.config
        self.train_config = train_config
        self.corpus = corpus or {}
        self.run_dir = run_dir
        self.checkpoint = checkpoint

    @property
    def device(self) -> torch.device:
        return self.model.dense.weight.device

    def describe(self) -> dict[str, Any]:
        """Architecture, vocabulary, parameters, the checkpoint loaded and the metrics of its last epoch."""
        return {
            "vocab_size": len(self.vocab),
            "cell": self.config.cell,
            "num_layers": self.config.num_layers,
            "embedding_size": self.config.embedding_size,
            "hidden_size": self.config.hidden_size,
            "parameters": count_parameters(self.model),
            "corpus": self.corpus,
            "checkpoint": self.checkpoint,
            "last_epoch": self.last_epoch,
        }

    @functools.cached_property
    def last_epoch(self) -> dict[str, Any] | None:
        """metrics.jsonl's record of the epoch the loaded weights finished, read once: epochs the run trains
        on after them describe other weights."""
        step = (self.checkpoint or {}).get("step")
        return epoch_record(self.run_dir, step) if self.run_dir and step is not None else None

    # -- generation ---------------------------------------------------------------------------------
    def dtype_for(self, batch: int) -> torch.dtype:
        """The matrix-product dtype used to generate a batch of this size (model.precision decides)."""
        return generation_dtype(self.precision, self.model, batch)

    def backend(self, batch: int) -> TorchBackend:
        return TorchBackend(self.model, self.dtype_for(batch))

    def state_values(self) -> int:
        if self.device.type != "cpu":
            return 0  # the state stays in the GPU's memory; only the logits come to this machine's
        return self.model.states_per_layer * self.config.num_layers * self.config.hidden_size

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(
        self,
        text: str,
        drop_unknown: bool = False,
        seq_len: int | None = None,
        batch_size: int = 64,
        protocol: str = "chunks",
        windows: int = 12_800,
        window_len: int = 256,
    ) -> dict[str, float]:
        """Mean cross-entropy of `text` in nats/char and bits/char under `protocol` (model/scoring.py):
        chunks (of the run's seq_len, state reset per chunk), stateful or windows."""
        ids = self.vocab.encode(text, drop_unknown=drop_unknown)
        return self.evaluate_ids(ids, seq_len, batch_size, protocol, windows, window_len)

    def evaluate_ids(
        self,
        ids: np.ndarray,
        seq_len: int | None = None,
        batch_size: int = 64,
        protocol: str = "chunks",
        windows: int = 12_800,
        window_len: int = 256,
    ) -> dict[str, float]:
        """`evaluate` for a text already in this model's ids (e.g. memory-mapped by data.prepare.in_vocab)."""
        if len(ids) < 2:
            raise CharRNNError("the evaluation text needs at least two known characters")
        seq_len = seq_len or (self.train_config.seq_len if self.train_config else 100)
        settings = Protocols(seq_len=seq_len, batch_size=batch_size, windows=windows, window_len=window_len)
        loss = evaluation.evaluate(self.model, ids, protocol, settings)
        return {"loss": loss, "bits_per_char": loss / math.log(2), "chars": int(len(ids)), "protocol": protocol}


class TorchBackend:
    """loop.Backend over the PyTorch model: primes with forward(), steps with a Stepper."""

    def __init__(self, model: CharRNN, dtype: torch.dtype):
        self.model, self.dtype = model, dtype
        self.stepper = Stepper(model, dtype)
        self.device = model.dense.weight.device

    @torch.inference_mode()
    def prime(self, prompts: list[np.ndarray], num_samples: int):
        logits, states = [], []
        for ids in prompts:
            # In pieces, the state carried: memory stays flat in the prompt's length (loop.pieces).
            state, fold = None, self.model.folds_embedding(len(ids))
            for piece in loop.pieces(ids):
                ids_t = torch.from_numpy(piece.astype(np.int64))[None].to(self.device)
                out, state = self.model(ids_t, state, dtype=self.dtype, fold=fold)
            logits.append(out[:, -1].expand(num_samples, -1))  # (num_samples, vocab)
            states.append(state.expand(-1, num_samples, -1))  # (layers, num_samples, hidden)
        with memory.allocating(
            f"the recurrent state of {len(prompts) * num_samples:,} samples", "lower --num-samples (num_samples)"
        ):
            return torch.cat(logits).cpu().numpy(), torch.cat(states, dim=1).contiguous()

    def step(self, ids: np.ndarray, state: torch.Tensor):
        if self.device.type == "cpu":
            return self.stepper.step_numpy(ids, state)
        logits, state = self.stepper.step(torch.from_numpy(ids).to(self.device), state)
        return logits.cpu().numpy(), state

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)

    def join(self, states: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(states, dim=1)  # (layers, rows, hidden) each -> (layers, all rows, hidden)

    def take(self, state: torch.Tensor, rows: list[int]) -> torch.Tensor:
        return state.index_select(1, torch.tensor(rows, dtype=torch.int64, device=state.device))


def load(
    run_dir: str | Path, checkpoint: str | None = None, device: str = GENERATION_DEVICE, precision: str = "auto"
) -> CharModel:
    """Load a run directory for generation. checkpoint: 'best', 'latest' or None (best if it exists).
    precision: 'fp32', 'bf16', 'int8' (quantised, CPU), or 'auto' (int8 where AVX512-VNNI runs the step
    kernels, else bf16 where this hardware has it natively and it pays at the batch size, else fp32)."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)[0]  # checked first: its model may be larger than this machine
    memory.check(
        memory.parameter_count(config) * memory.FLOAT_BYTES,
        f"the model of {run_dir / 'config.json'}, {memory.describe(config)},",
        "load it on a machine with more memory, or train a smaller one",
    )
    model, vocab, _, train_config, corpus, loaded = load_run_checkpoint(run_dir, checkpoint, resolve_device(device))
    return CharModel(model, vocab, train_config, corpus, run_dir, precision, loaded)
