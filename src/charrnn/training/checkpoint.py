"""Checkpoints: latest.safetensors with trainer_state.pt, and best.safetensors.

trainer_state.pt holds what a resumed run needs to continue bit for bit: the weights, the optimizer's moments,
the position in the data, the random state, the carried state and the weight average. The weight files hold
the scored weights (the average when ema > 0). Only rank 0 calls the writers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import CharRNNError, WriteError
from charrnn.model import weights as weight_files
from charrnn.model.network import CharRNN
from charrnn.storage import run as run_folder
from charrnn.training import optimizer as regularize

if TYPE_CHECKING:
    from charrnn.training.trainer import Trainer

# The trainer's position in the run, saved and restored as plain fields.
POSITION = ("epoch", "step_in_epoch", "global_step", "epoch_loss_sum", "best_val_loss", "bad_epochs", "elapsed")


def save(trainer: Trainer) -> None:
    """latest.safetensors and the trainer state, both written atomically, under the run's lock."""
    saved = state(trainer)
    trainer.acquire_lock()
    weight_files.save_trainer_state(trainer.run_dir / run_folder.TRAINER_STATE, saved)
    trainer.checkpoint_step = trainer.global_step  # what --resume starts from, even if the next write fails
    weight_files.save_weights(
        trainer.run_dir / run_folder.LATEST, trainer.scored_model, epoch=trainer.epoch, step=trainer.global_step
    )


def save_best(trainer: Trainer) -> None:
    """best.safetensors: the weights of the epoch that just set `best_val_loss` (the epoch not yet counted)."""
    weight_files.save_weights(
        trainer.run_dir / run_folder.BEST,
        trainer.scored_model,
        epoch=trainer.epoch + 1,
        step=trainer.global_step,
        val_loss=trainer.best_val_loss,
        val_protocol=trainer.config.val_protocol,
    )


def state(trainer: Trainer) -> dict[str, Any]:
    """The trainer state to save, with every tensor on the CPU."""
    saved = {
        "model": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        **{name: getattr(trainer, name) for name in POSITION},
        "rng": torch.get_rng_state(),
    }
    if trainer.carried is not None:
        saved["carried"] = trainer.carried.detach().cpu().clone()
    if trainer.average is not None:
        saved["average"] = trainer.average.state_dict()
    if trainer.device.type == "cuda":
        saved["cuda_rng"] = torch.cuda.get_rng_state_all()
    return saved


def load(path: Path, model_config: ModelConfig, config: TrainConfig) -> tuple[CharRNN, dict[str, Any]]:
    """The model with the saved weights, and the whole checked state."""
    model = CharRNN(model_config)
    saved = weight_files.load_trainer_state(path, model, regularize.parameter_order(model, config))
    model.load_state_dict(saved["model"])
    return model, saved


def restore(trainer: Trainer, saved: dict[str, Any], path: Path) -> None:
    """Put a trainer built on the saved weights where the state left off: the optimizer, the random state,
    the position, the carried state and the weight average."""
    fix = f"delete {path.name} to restart this run from step 0, or restore it from a backup"
    try:
        trainer.optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        if saved.get("cuda_rng") is not None and torch.cuda.is_available():
            # A state saved with more GPUs than this machine has: each device takes its own.
            torch.cuda.set_rng_state_all(list(saved["cuda_rng"])[: torch.cuda.device_count()])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise CharRNNError(f"{path} is damaged ({str(exc).splitlines()[0]}); {fix}") from None
    for name in POSITION:
        setattr(trainer, name, saved[name])
    try:
        if trainer.config.stateful and trainer.step_in_epoch:
            batch_size = trainer.config.batch_size
            trainer.carried = weight_files.carried_state(saved, trainer.model, batch_size).to(trainer.device)
        if trainer.average is not None:
            if saved.get("average") is None:
                raise ValueError("no weight average saved, though the run has ema > 0")
            trainer.average.load_state_dict(saved["average"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CharRNNError(f"{path} is damaged ({str(exc).splitlines()[0]}); {fix}") from None
    if trainer.step_in_epoch > len(trainer.batches):
        raise CharRNNError(
            f"{path} is damaged (step {trainer.step_in_epoch} of an epoch of {len(trainer.batches)}); {fix}"
        )
    trainer.checkpoint_step = trainer.global_step


def write_failure(exc: WriteError, checkpoint_step: int | None, run_dir: Path) -> str:
    """One line for a failed write: what failed, that the last checkpoint is intact, how to go on."""
    if checkpoint_step is None:
        saved = "no checkpoint was written yet (resuming starts from step 0)"
    else:
        saved = f"the last checkpoint (step {checkpoint_step}) is intact"
    return (
        f"{exc.reason} while writing {exc.path}; {saved}: {exc.action}, then resume with: "
        f"charrnn train --resume {run_dir}"
    )
