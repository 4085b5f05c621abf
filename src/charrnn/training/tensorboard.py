"""TensorBoard event files in the run directory, beside metrics.jsonl: `tensorboard --logdir runs/`.

Written with PyTorch's own `torch.utils.tensorboard.SummaryWriter` (it needs the `tensorboard` package:
`pip install 'charrnn[tensorboard]'`). Every scalar is a field of a metrics.jsonl record at the same
global step, so the two never disagree. Named tblog so that it does not shadow the tensorboard package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from charrnn.errors import CharRNNError, WriteError

# metrics.jsonl (kind, field) -> TensorBoard tag; the x axis is the record's global "step".
TAGS = {
    ("step", "loss"): "loss/train",
    ("step", "lr"): "learning_rate",
    ("epoch", "train_loss"): "loss/train_epoch",
    ("epoch", "val_loss"): "loss/val",
    ("epoch", "val_bits_per_char"): "bits_per_char/val",
    ("epoch", "ms_per_step"): "time/ms_per_step",
}


def installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class EventLog:
    """Writes metrics records as scalars. The writer opens on the first record, so only a process that
    logs (DDP's rank 0) creates a file, and a run with tensorboard off never imports it."""

    def __init__(self, run_dir: Path, setting: str):
        """setting: TrainConfig.tensorboard (on, off or auto), already validated."""
        if setting == "on" and not installed():
            raise CharRNNError(
                "tensorboard is on but the tensorboard package is not installed: "
                "pip install 'charrnn[tensorboard]', or train with --tensorboard off"
            )
        self.run_dir = Path(run_dir)
        self.enabled = setting == "on" or (setting == "auto" and installed())
        self.writer = None
        self.purge_step: int | None = None

    def resume_at(self, step: int) -> None:
        """Resuming from the checkpoint at `step`: events logged after it describe steps that will be redone,
        and TensorBoard hides them once the new file says so (SummaryWriter's purge_step), as
        metrics.jsonl is truncated."""
        self.close()
        self.purge_step = step + 1

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:  # a full disk is a WriteError, so training says which checkpoint is intact
            if self.writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir), purge_step=self.purge_step)
                self.purge_step = None
            for (kind, field), tag in TAGS.items():
                if record.get("kind") == kind and record.get(field) is not None:
                    self.writer.add_scalar(tag, record[field], record["step"])
            self.writer.flush()  # as metrics.jsonl, whose lines are on disk once logged
        except OSError as exc:
            raise WriteError(self.run_dir / "events.out.tfevents.*", exc) from None

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except OSError as exc:
                raise WriteError(self.run_dir / "events.out.tfevents.*", exc) from None
