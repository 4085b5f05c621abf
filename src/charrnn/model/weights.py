"""Weights and trainer state on disk: safetensors files written, the resumable trainer state, each checked
when read.

Weight files and the trainer state carry a SHA-256 of their tensors, so flipped bytes are an error that
names the file, never a silently different model. `load_run` builds the network from a run folder that
arrays.load_run has read and checked (the same reader as generation without PyTorch).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from charrnn.errors import CharRNNError
from charrnn.model import arrays
from charrnn.model.network import CharRNN
from charrnn.storage import formats
from charrnn.storage.files import atomic_write_bytes
from charrnn.storage.run import TRAINER_STATE

WEIGHTS_FORMAT_VERSION = 1


TRAINER_STATE_FORMAT_VERSION = 1


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in name order (arrays.sha256_of: the
    torch-free reader computes the same digest from numpy arrays)."""
    return arrays.sha256_of(
        (name, str(t.dtype), tuple(t.shape), t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        for name, t in tensors.items()
    )


def save_weights(path: Path, model: torch.nn.Module, **meta: Any) -> None:
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format_version": str(WEIGHTS_FORMAT_VERSION),
        "tensors_sha256": tensors_sha256(tensors),
        **{k: json.dumps(v) for k, v in meta.items()},
    }
    # Serialised in memory, then written by Python: a full disk is then an OSError with its errno, which
    # the caller can name, instead of whatever the library's writer reports.
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))


def save_trainer_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(
        {"format_version": TRAINER_STATE_FORMAT_VERSION, "model_sha256": tensors_sha256(state["model"]), **state},
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def load_trainer_state(
    path: Path, model: CharRNN | None = None, optimizer_order: list[str] | None = None
) -> dict[str, Any]:
    """The resumable state, checked: plain fields by schema, weights against `model` (when given) and
    their SHA-256, Adam's moments against the weights' shapes. `optimizer_order`: the parameter names in
    the optimizer's order (training/optimizer.parameter_order; default the model's own order)."""
    path = Path(path)
    fix = (
        f"delete {path.name} to restart this run from step 0 (charrnn train --resume {path.parent}), "
        "or restore it from a backup"
    )
    if not path.is_file():
        raise CharRNNError(f"{path.parent} has no {TRAINER_STATE} to resume from; it never finished a checkpoint")
    try:
        # weights_only=True: unpickling is restricted to tensors and plain containers, so a
        # tampered file cannot run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CharRNNError(f"{path} is damaged ({first}); {fix}") from None
    if not isinstance(state, dict):
        raise CharRNNError(f"{path} is damaged (it holds a {type(state).__name__}, not a trainer state); {fix}")
    info = formats.parse(formats.TrainerStateInfo, state, path, fix)
    weights = info.model
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise CharRNNError(f"{path} is damaged (its weights are not a name -> tensor mapping); {fix}")
    if info.model_sha256 is not None and info.model_sha256 != tensors_sha256(weights):
        raise CharRNNError(
            f"{path} is damaged (its weights do not match the SHA-256 recorded when it was written); {fix}"
        )
    if (
        not isinstance(info.rng, torch.Tensor)
        or info.rng.dtype != torch.uint8
        or info.rng.shape != torch.get_rng_state().shape
    ):
        raise CharRNNError(f"{path} is damaged (its random-number state is not a generator state); {fix}")
    if model is not None:
        expected = model.state_dict()
        wrong = sorted(set(expected) ^ set(weights)) or [
            k for k in expected if weights[k].shape != expected[k].shape or weights[k].dtype != expected[k].dtype
        ]
        if wrong:
            raise CharRNNError(f"{path} does not fit the model in config.json (tensor {wrong[0]}); {fix}")
        _check_optimizer(info.optimizer, [expected[k] for k in (optimizer_order or expected)], path, fix)
    return state


def carried_state(state: dict[str, Any], model: CharRNN, batch_size: int) -> torch.Tensor:
    """The stateful trainer's carried recurrent state, checked against the model and batch size."""
    carried = state.get("carried")
    expected = tuple(model.initial_state(batch_size, "cpu").shape)
    if not isinstance(carried, torch.Tensor) or tuple(carried.shape) != expected or carried.dtype != torch.float32:
        raise ValueError(f"its carried recurrent state is not a float32 tensor of shape {list(expected)}")
    return carried


def _check_optimizer(optimizer: dict[str, Any], params: list[torch.Tensor], path: Path, fix: str) -> None:
    """Adam's state: one group over every parameter, moments shaped like them."""
    groups, moments = optimizer.get("param_groups"), optimizer.get("state")
    try:
        indices = [i for group in groups for i in group["params"]]
        ok = sorted(indices) == list(range(len(params))) and isinstance(moments, dict)
        for index, entry in (moments or {}).items():
            for key in ("exp_avg", "exp_avg_sq"):
                ok = ok and isinstance(entry[key], torch.Tensor) and entry[key].shape == params[index].shape
    except (TypeError, KeyError, IndexError, AttributeError):
        ok = False
    if not ok:
        raise CharRNNError(f"{path} is damaged (its optimizer state does not fit the model); {fix}")


def load_run(run_dir: Path, checkpoint: str | None = None, device: str | torch.device = "cpu"):
    """(model in eval mode, vocab, model config, train config, corpus info) from a run directory, every
    file read and checked by arrays.load_run (the torch-free path's reader too)."""
    run = arrays.load_run(run_dir, checkpoint)
    return network(run, device), run.vocab, run.model_config, run.train_config, run.corpus


def network(run: arrays.RunArrays, device: str | torch.device = "cpu") -> CharRNN:
    """The network holding a run's checked weights, in eval mode on `device`."""
    model = CharRNN(run.model_config)
    model.load_state_dict({name: torch.from_numpy(values) for name, values in run.arrays.items()}, strict=True)
    return model.to(device).eval()
