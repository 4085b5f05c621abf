"""A trained model in PyTorch: CharModel with generate / stream / evaluate.

`charrnn.load(RUN)` returns one where PyTorch computes the steps (not a GRU, CUDA, no C compiler), and
loads one behind the torch-free model for evaluation (generation/runs.py); the CLI and the server call
exactly these methods. Generation primes each distinct prompt once, then samples all rows of the batch
together, carrying the recurrent state one character at a time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charrnn.config import GENERATION_DEVICE, ModelConfig, TrainConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.generation import loop
from charrnn.generation.described import Described
from charrnn.model import arrays, memory
from charrnn.model import scoring as evaluation
from charrnn.model.network import CharRNN
from charrnn.model.precision import generation_dtype, precision_name, resolve_device, resolve_precision
from charrnn.model.scoring import Protocols
from charrnn.model.stepper import Stepper
from charrnn.model.weights import network


class CharModel(Described, loop.Generator):
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
        """`checkpoint`: the weight file loaded, {"file", "epoch", "step"} (arrays.RunArrays.checkpoint)."""
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
    run_dir: str | Path,
    checkpoint: str | None = None,
    device: str = GENERATION_DEVICE,
    precision: str = "auto",
    threads: int | None = None,
) -> CharModel:
    """Load a run directory for generation with PyTorch (`charrnn.load` steps a GRU on the CPU without it:
    generation/runs.py, which documents the arguments)."""
    device = resolve_device(device)
    return from_arrays(arrays.load_run(Path(run_dir), checkpoint), Path(run_dir), device, precision, threads)


def from_arrays(
    run: arrays.RunArrays, run_dir: Path, device: str | torch.device, precision: str, threads: int | None = None
) -> CharModel:
    """The CharModel of a run arrays.load_run has read and checked; `threads` (None: PyTorch's default, the
    cores) sets PyTorch's compute threads, for the whole process."""
    if threads:
        torch.set_num_threads(threads)
    model = network(run, device)
    return CharModel(model, run.vocab, run.train_config, run.corpus, run_dir, precision, run.checkpoint)
