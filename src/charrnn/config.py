"""Configuration: frozen dataclasses with a short doc per field. CLI flags map onto these fields one
to one, `config.json` in a run directory stores them, and unknown keys are errors everywhere."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from charrnn.errors import CharRNNError

CELLS = ("gru", "lstm", "rnn")
DEVICES = ("auto", "cpu", "cuda")
# Generation and scoring default to the CPU: one character at a time, a GPU's per-step launch costs more
# than the CPU step kernels' work. Training's default is TrainConfig.device ("auto": CUDA when there is one).
GENERATION_DEVICE = "cpu"
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "bf16", "fp32")
GENERATION_PRECISIONS = (*PRECISIONS, "int8")  # int8: generation only (quantised step kernels)
DECODE_ERRORS = ("fail", "skip", "replace")
TENSORBOARD = ("auto", "on", "off")
PROTOCOLS = ("chunks", "stateful", "windows")  # evaluation protocols: see model/scoring.py
# Every seed, training's and generation's, is an integer in [0, MAX_SEED]: numpy's generators take any
# non-negative integer and torch's take up to 2**64 - 1.
MAX_SEED = 2**64 - 1


def random_seed() -> int:
    """A seed for a request or command that names none; it is reported back, so the text can be made again."""
    import secrets

    return secrets.randbelow(2**31)


def _check_types(config: Any) -> None:
    """Strict types from the field annotations: a JSON `true` is not the number 1, "3" is not 3.
    An int given for a float field is stored as a float."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kind = field.type if isinstance(field.type, str) else field.type.__name__
        if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(config, field.name, float(value))
            continue
        expected = {"int": int, "float": float, "str": str, "bool": bool}.get(kind)
        if expected is None:
            continue
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            noun = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}[kind]
            raise CharRNNError(f"{field.name} must be {noun}; got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The network: Embedding -> RNN (1..N layers) -> Dense, the tutorial's defaults."""

    vocab_size: int  # distinct characters; set from the text, never by hand
    embedding_size: int = 256  # width of each character's learned vector
    hidden_size: int = 1024  # units per recurrent layer
    num_layers: int = 1  # stacked recurrent layers
    cell: str = "gru"  # recurrent cell: gru, lstm or rnn (tanh)
    dropout: float = 0.0  # dropout between recurrent layers and before the output layer (for a GRU
    #                        on CPU, one mask per sequence shared across time steps: locked dropout)
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden weights: one mask per batch, training only
    embedding_dropout: float = 0.0  # drop whole characters' embedding rows (scaled), one mask per batch, training only

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("vocab_size", "embedding_size", "hidden_size", "num_layers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise CharRNNError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if self.cell not in CELLS:
            raise CharRNNError(f"cell must be one of {', '.join(CELLS)}; got {self.cell!r}")
        for name in ("dropout", "weight_drop", "embedding_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:  # NaN fails this too
                raise CharRNNError(f"{name} must be in [0, 1); got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: data, optimisation, checkpoints. Defaults follow the tutorial where it has one."""

    text: str = "shakespeare"  # file, folder of *.txt, glob, http(s) URL, or built-in corpus name
    encoding: str = "utf-8"  # the text's encoding; decoding is strict
    skip_chars: int = 0  # drop this many characters from the start of the text
    val_fraction: float = 0.1  # the last part of the text held out for validation; 0 = tutorial
    batch_size: int = 64  # sequences per step
    seq_len: int = 100  # characters per training sequence
    epochs: int = 20  # passes over the training text
    max_steps: int = 0  # stop after this many optimizer steps in total; 0 = no limit
    max_minutes: float = 0.0  # stop (with a checkpoint) after this much training time in total; 0 = no limit
    lr: float = 1e-3  # Adam learning rate
    lr_schedule: str = "constant"  # constant, or cosine: decay to lr/10 over the planned steps (epochs or max_steps)
    clip: float = 0.0  # clip the gradient norm to this; 0 = off
    seed: int = 0  # seeds weights, shuffling and dropout (0 to 2**64 - 1): same seed, same run
    device: str = "auto"  # auto (cuda when available), cpu or cuda
    precision: str = "auto"  # matrix products in bf16 or fp32; auto = bf16 where the hardware does it natively
    patience: int = 0  # stop when validation loss has not improved for this many epochs; 0 = off
    checkpoint_every: int = 200  # also save the latest checkpoint every N steps; 0 = epoch ends only
    log_every: int = 10  # write a metrics line every N steps
    decode_errors: str = (
        "fail"  # files of a folder or glob that do not decode: fail, skip (leave out) or replace (U+FFFD)
    )
    eval_chars: int = 2_000_000  # validate on a fixed sample of at most this many characters; 0 = the whole split
    tensorboard: str = "auto"  # TensorBoard event files in the run directory: on, off, or auto (on when the
    #                            tensorboard package is installed)
    init_from: str = ""  # a run directory (or an imported model) whose weights this run starts from, with its
    #                      vocabulary extended by the text's new characters; "" = fresh weights
    stateful: bool = False  # truncated BPTT: the text as batch_size contiguous streams, each batch continuing
    #                         the last, the state carried (detached) between batches; False = the tutorial's
    #                         shuffled chunks with the state reset every sequence
    weight_decay: float = 0.0  # decoupled weight decay (AdamW) on the weight matrices; biases and the
    #                            embedding are not decayed; 0 = plain Adam
    ema: float = 0.0  # decay of an exponential moving average of the weights, updated every step; validation,
    #                   best.safetensors and latest.safetensors use the average; 0 = off (e.g. 0.999)
    val_protocol: str = "chunks"  # what val_loss (best checkpoint, --patience) measures: chunks, stateful or windows
    val_also: str = ""  # more protocols scored every epoch, for the record: comma-separated, or "all"
    eval_windows: int = 12_800  # windows protocol: random windows scored (nanoGPT: 200 x 64)
    eval_window_len: int = 256  # windows protocol: characters per window (nanoGPT's block size)
    fit_budget: bool = False  # with max_minutes: at each checkpoint, set max_steps (and so the schedule's end)
    #                           to the steps the rest of the budget holds at the run's speed so far

    def __post_init__(self) -> None:
        _check_types(self)
        positive = ("batch_size", "seq_len", "epochs")
        non_negative = ("skip_chars", "max_steps", "patience", "checkpoint_every", "seed")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise CharRNNError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        for name in non_negative:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise CharRNNError(f"{name} must be a non-negative integer; got {getattr(self, name)!r}")
        if self.seed > MAX_SEED:
            raise CharRNNError(f"seed must be an integer from 0 to 2**64 - 1; got {self.seed}")
        if not isinstance(self.log_every, int) or self.log_every < 1:
            raise CharRNNError(f"log_every must be a positive integer; got {self.log_every!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise CharRNNError(f"lr must be a positive number; got {self.lr}")
        if not (math.isfinite(self.clip) and self.clip >= 0):
            raise CharRNNError(f"clip must be >= 0 (0 = off); got {self.clip}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise CharRNNError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}")
        if not (math.isfinite(self.max_minutes) and self.max_minutes >= 0):
            raise CharRNNError(f"max_minutes must be >= 0 (0 = no limit); got {self.max_minutes}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise CharRNNError(f"val_fraction must be in [0, 1); got {self.val_fraction}")
        if self.precision not in PRECISIONS:
            raise CharRNNError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.tensorboard not in TENSORBOARD:
            raise CharRNNError(f"tensorboard must be one of {', '.join(TENSORBOARD)}; got {self.tensorboard!r}")
        if self.device not in DEVICES:
            raise CharRNNError(f"device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        if self.decode_errors not in DECODE_ERRORS:
            raise CharRNNError(f"decode_errors must be one of {', '.join(DECODE_ERRORS)}; got {self.decode_errors!r}")
        for name in ("weight_decay", "ema"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise CharRNNError(f"{name} must be in [0, 1); got {getattr(self, name)}")
        if self.val_protocol not in PROTOCOLS:
            raise CharRNNError(f"val_protocol must be one of {', '.join(PROTOCOLS)}; got {self.val_protocol!r}")
        also_protocols(self.val_also)  # validates
        for name in ("eval_windows", "eval_window_len"):
            if getattr(self, name) < 1:
                raise CharRNNError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if self.eval_chars < 0:  # an int: _check_types said so
            raise CharRNNError(
                f"eval_chars must be a non-negative integer (0 = the whole split); got {self.eval_chars!r}"
            )


def also_protocols(text: str) -> tuple[str, ...]:
    """The protocols named by val_also ("", "all", or a comma-separated list)."""
    if text.strip() == "all":
        return PROTOCOLS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in PROTOCOLS:
            raise CharRNNError(f"val_also: unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)} or all")
    return names


T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build a config dataclass from a mapping; unknown keys are an error naming `where`."""
    if not isinstance(data, Mapping):
        raise CharRNNError(f"{where}: expected an object of settings, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CharRNNError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise CharRNNError(f"{where}: {exc}") from None
