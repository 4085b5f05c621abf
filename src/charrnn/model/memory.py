"""Memory: refuse a job this machine cannot hold before allocating it, and name the setting to lower.

Without this, a model or batch larger than the machine is a PyTorch traceback ("DefaultCPUAllocator: can't
allocate memory") at best, and at worst the kernel's out-of-memory killer: Linux hands out memory it does
not have and kills the process when it is touched. So each job estimates what it will certainly allocate
(a lower bound: the weights, the optimizer's moments, the recurrent state) and compares it with the memory
the system says is available, swap included. Only a job that clearly cannot fit is refused.

numpy and the standard library only: generation.loop and the ONNX runtime use it without torch.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

from charrnn.config import ModelConfig
from charrnn.errors import CharRNNError

FLOAT_BYTES = 4
MODEL_SETTINGS = "hidden_size, num_layers or embedding_size (--hidden, --layers, --embedding)"


def available_bytes() -> int | None:
    """Memory a process can still get: MemAvailable plus free swap on Linux, psutil elsewhere; None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in meminfo if line.count(":") == 1}
        if "MemAvailable" in fields:
            return fields["MemAvailable"] + fields.get("SwapFree", 0)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.virtual_memory().available + psutil.swap_memory().free


def size(n: float) -> str:
    """Bytes for people: 1.3 TB, 512.0 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check(needed: int, what: str, fix: str) -> None:
    """Refuse `what` when it needs more than the available memory. `fix` names the setting to lower."""
    # For a system whose free memory is undercounted (e.g. a ZFS cache that Linux does not report as
    # available): the job then runs and meets the real limit instead.
    if os.environ.get("CHARRNN_NO_MEMORY_CHECK"):
        return
    available = available_bytes()
    if available is not None and needed > available:
        raise CharRNNError(
            f"{what} would take at least {size(needed)} of memory, but this machine has {size(available)} available; {fix}"
        )


GATES = {"gru": 3, "lstm": 4, "rnn": 1}  # weight rows per hidden unit


def tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """CharRNN's state_dict names and shapes for `config`, known without building it: what a weight file
    must hold, what the step kernels pack, and what the memory checks count."""
    rows, hidden = GATES[config.cell] * config.hidden_size, config.hidden_size
    shapes = {"embedding.weight": (config.vocab_size, config.embedding_size)}
    for layer in range(config.num_layers):
        inputs = config.embedding_size if layer == 0 else hidden
        shapes |= {
            f"rnn.weight_ih_l{layer}": (rows, inputs),
            f"rnn.weight_hh_l{layer}": (rows, hidden),
            f"rnn.bias_ih_l{layer}": (rows,),
            f"rnn.bias_hh_l{layer}": (rows,),
        }
    return shapes | {"dense.weight": (config.vocab_size, hidden), "dense.bias": (config.vocab_size,)}


def parameter_counts(config: ModelConfig) -> tuple[int, int, int]:
    """Parameters of the embedding, the recurrent layers and the dense layer."""
    sizes = {name: math.prod(shape) for name, shape in tensor_shapes(config).items()}
    embedding, dense = sizes.pop("embedding.weight"), sizes.pop("dense.weight") + sizes.pop("dense.bias")
    return embedding, sum(sizes.values()), dense


def parameter_count(config: ModelConfig) -> int:
    return sum(parameter_counts(config))


def describe(config: ModelConfig) -> str:
    return (
        f"a {config.cell} model of {config.num_layers} x {config.hidden_size} units "
        f"(embedding {config.embedding_size}, {parameter_count(config):,} parameters)"
    )


def check_model(config: ModelConfig) -> None:
    """The weights of `config`'s model, in fp32."""
    check(parameter_count(config) * FLOAT_BYTES, f"the weights of {describe(config)}", f"lower {MODEL_SETTINGS}")


def check_training(config: ModelConfig, batch_size: int, seq_len: int) -> None:
    """Training `config`'s model: weights, gradients and Adam's two moments, and one batch's recurrent
    outputs (every step's state is kept for the backward pass)."""
    weights = parameter_count(config) * FLOAT_BYTES
    states = 2 if config.cell == "lstm" else 1
    activations = batch_size * seq_len * config.num_layers * states * config.hidden_size * FLOAT_BYTES
    check(
        4 * weights + activations,
        f"training {describe(config)} at batch_size {batch_size} x seq_len {seq_len}",
        f"lower {MODEL_SETTINGS}, or --batch-size and --seq-len",
    )


def check_batch(rows: int, state_values: int, vocab_size: int) -> None:
    """Generating `rows` samples together: each holds its recurrent state (`state_values` floats: the
    primed copy and the two the steps alternate between) and its next-character logits and probabilities."""
    per_row = 3 * state_values * FLOAT_BYTES + 2 * vocab_size * 8
    check(
        rows * per_row,
        f"generating {rows:,} samples together",
        "lower num_samples (--num-samples) or the number of prompts",
    )


# What PyTorch and numpy say when an allocation fails (CPU and CUDA).
_ALLOCATION_FAILURES = ("can't allocate memory", "defaultcpuallocator", "out of memory", "unable to allocate")


@contextlib.contextmanager
def allocating(what: str, fix: str) -> Iterator[None]:
    """Turn a failed allocation inside the block into one line that says what could not be allocated."""
    try:
        yield
    except MemoryError as exc:
        raise CharRNNError(f"out of memory while allocating {what}{_bytes_in(str(exc))}; {fix}") from None
    except RuntimeError as exc:
        message = str(exc)
        if not any(failure in message.lower() for failure in _ALLOCATION_FAILURES):
            raise
        raise CharRNNError(f"out of memory while allocating {what}{_bytes_in(message)}; {fix}") from None


def _bytes_in(message: str) -> str:
    """' (N bytes)' from an allocator's message ("... allocate 1234 bytes ..."), or ''."""
    words = message.replace(".", " ").split()
    for before, after in zip(words, words[1:]):
        if after == "bytes" and before.isdigit():
            return f" ({size(int(before))})"
    return ""
