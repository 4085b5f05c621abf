"""What a run records beside its weights: metrics.jsonl, TensorBoard event files and loss.png.

`RunLog` is the one object the trainer writes records to. metrics.jsonl holds every record; the event files
(`tensorboard --logdir runs/`) hold the fields named in `TAGS` as scalars at the record's global step, so the
two never disagree; the plot is redrawn from the records at each epoch's end. Event files are written with
PyTorch's own `torch.utils.tensorboard.SummaryWriter`, which needs the `tensorboard` package
(`pip install 'charrnn[tensorboard]'`).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charrnn.errors import CharRNNError, WriteError
from charrnn.storage import run as run_folder
from charrnn.storage.files import append_text, atomic_path, atomic_write_text

if TYPE_CHECKING:
    from charrnn.training.trainer import Trainer

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
    """Whether the tensorboard package is there to write event files with."""
    return importlib.util.find_spec("tensorboard") is not None


def step_record(trainer: Trainer, loss: float, elapsed: float) -> dict[str, Any]:
    """The record of a logged step (every log_every steps), after the step; `elapsed`: training seconds so far."""
    return {
        "kind": "step",
        "epoch": trainer.epoch + 1,
        "step": trainer.global_step,
        "loss": loss,
        "lr": trainer.learning_rate(),
        "elapsed": elapsed,
        "precision": trainer.precision,
        "format_version": run_folder.METRICS_FORMAT_VERSION,
    }


def epoch_record(trainer: Trainer, seconds: float, complete: bool, losses: dict[str, float] | None) -> dict[str, Any]:
    """The record of an epoch (a partial one when a stop rule ended it), before its end is counted; `losses`:
    {protocol: validation loss}, None without a validation split. The caller fills in "elapsed" last, so that
    it includes what the epoch's end costs."""
    steps = trainer.step_in_epoch
    val_loss = None if losses is None else losses[trainer.config.val_protocol]
    return {
        "kind": "epoch",
        "epoch": trainer.epoch + 1,
        "step": trainer.global_step,
        "complete": complete,
        "train_loss": trainer.epoch_loss_sum / steps if steps else float("nan"),
        "val_loss": val_loss,
        "val_protocol": trainer.config.val_protocol,
        "val_losses": losses,
        "val_bits_per_char": None if val_loss is None else val_loss / math.log(2),
        "seconds": seconds,
        "ms_per_step": 1000 * seconds / max(1, steps),
        "precision": trainer.precision,
        "elapsed": None,
        "lr": trainer.learning_rate(),
        "val_chars_scored": int(len(trainer.eval_ids)),
        "format_version": run_folder.METRICS_FORMAT_VERSION,
    }


class RunLog:
    """metrics.jsonl, the event files and the plot of one run. Only the process that writes the run
    directory (DDP's rank 0) writes them; on the others every method does nothing. What the plot needs of
    the records is kept in memory once read, so it never reads back a file someone may have changed since."""

    def __init__(self, run_dir: Path, tensorboard: str, writes: bool = True):
        """tensorboard: TrainConfig.tensorboard (on, off or auto), already validated."""
        self.run_dir = Path(run_dir)
        self.writes = writes
        self.events = EventLog(self.run_dir, tensorboard)
        self.points: list[dict[str, Any]] | None = None  # what the plot needs of every record, once read

    def write(self, record: dict[str, Any]) -> None:
        """One record: a line of metrics.jsonl, then its scalars."""
        if not self.writes:
            return
        append_text(self.run_dir / run_folder.METRICS, json.dumps(record) + "\n")
        if self.points is not None:
            self.points.append(_plotted(record))
        self.events.write(record)

    def resume_at(self, step: int, epoch: int) -> None:
        """Resuming from the checkpoint at `step`, with `epoch` epochs counted: records written after it
        describe steps and epoch ends that will be redone, so metrics.jsonl loses them (rewritten whole,
        atomically) and TensorBoard hides them. A damaged line is an error naming it."""
        if not self.writes:
            return
        lines = run_folder.load_metrics(self.run_dir)
        kept = [(line, r) for line, r in lines if _before(r, step, epoch)]
        atomic_write_text(self.run_dir / run_folder.METRICS, "".join(line + "\n" for line, _ in kept))
        self.points = [_plotted(r) for _, r in kept]
        # An epoch's end logged at the checkpoint's own step is redone too: TensorBoard hides from there
        # and is given back the records kept at and after that step.
        purge = min([step + 1, *(r["step"] for _, r in lines if not _before(r, step, epoch))])
        self.events.resume_at(purge, [r for _, r in kept if r["step"] >= purge])

    def plot(self) -> None:
        """Redraw loss.png from the run's records."""
        if not self.writes:
            return
        if self.points is None:
            self.points = [_plotted(r) for _, r in run_folder.load_metrics(self.run_dir)]
        plot_losses(self.points, self.run_dir / run_folder.PLOT)

    def close(self) -> None:
        self.events.close()


def _plotted(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in ("kind", "step", "loss", "train_loss", "val_loss") if key in record}


def _before(record: dict[str, Any], step: int, epoch: int) -> bool:
    """Whether a checkpoint at `step`, with `epoch` epochs counted, already holds what `record` describes.
    The end of an epoch comes after its last step: a kill between its line and its checkpoint leaves a
    checkpoint at the same step, the epoch not yet counted."""
    if record["kind"] == "epoch" and record.get("complete", True) and record["epoch"] > epoch:
        return False
    return record["step"] <= step


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
        self.replay: list[dict[str, Any]] = []  # kept records at or after purge_step, for the new file

    def resume_at(self, purge_step: int, replay: list[dict[str, Any]]) -> None:
        """Resuming: events logged from `purge_step` on describe steps that will be redone, and TensorBoard
        hides them once the new file says so (SummaryWriter's purge_step), as metrics.jsonl is truncated;
        `replay`, the records metrics.jsonl keeps from that step on, go into the new file first."""
        self.close()
        self.purge_step, self.replay = purge_step, list(replay)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:  # a full disk is a WriteError, so training says which checkpoint is intact
            if self.writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir), purge_step=self.purge_step)
                self.purge_step = None
                for kept in self.replay:
                    self._scalars(kept)
                self.replay = []
            self._scalars(record)
            self.writer.flush()  # as metrics.jsonl, whose lines are on disk once logged
        except OSError as exc:
            raise WriteError(self.run_dir / "events.out.tfevents.*", exc) from None

    def _scalars(self, record: dict[str, Any]) -> None:
        for (kind, field), tag in TAGS.items():
            if record.get("kind") == kind and record.get(field) is not None:
                self.writer.add_scalar(tag, record[field], record["step"])

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except OSError as exc:
                raise WriteError(self.run_dir / "events.out.tfevents.*", exc) from None


def plot_losses(records: list[dict[str, Any]], path: Path) -> None:
    """Training loss (per logged step and per epoch) and validation loss (per epoch) against steps."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    steps = [(r["step"], r["loss"]) for r in records if r["kind"] == "step"]
    val = [(r["step"], r["val_loss"]) for r in records if r["kind"] == "epoch" and r.get("val_loss") is not None]
    train = [(r["step"], r["train_loss"]) for r in records if r["kind"] == "epoch" and r.get("train_loss") is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if steps:
        ax.plot(*zip(*steps), label="train (logged steps)", color="tab:blue", alpha=0.5, linewidth=1)
    if train:
        ax.plot(*zip(*train), "o-", label="train (epoch mean)", color="tab:blue")
    if val:
        ax.plot(*zip(*val), "s-", label="validation", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
