"""What a run prints as it trains: the opening lines, a progress bar per epoch and a summary line at each
epoch's end.

The bar reads `epoch 3/10 [#########...............] 150/400 95 ms/step loss 1.8731 ETA 0:23` (the loss is
the epoch's running mean). tqdm redraws it in place on a terminal and draws it as a widget in a notebook
that has ipywidgets; anywhere else (a file, a pipe, a StringIO) the same line is written whole every tenth of the epoch and at its
end, so a captured log stays plain lines.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, TextIO

import torch
from tqdm import TqdmWarning

with warnings.catch_warnings():
    # A notebook without ipywidgets gets tqdm's console bar and a warning to install them; the plain lines
    # below serve that notebook, so the warning is only noise.
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

from charrnn.training import distributed

if TYPE_CHECKING:
    from charrnn.training.trainer import Trainer

# The bar's text; tqdm fills desc, bar, n and total, `fields` the rest.
LINE = "{desc} [{bar:24}] {n}/{total} {ms_per_step} ms/step loss {loss} ETA {time_left}"
# tqdm.notebook draws the bar as a widget between the text before and after `{bar}`.
WIDGET = LINE.replace("[{bar:24}]", "{bar}")
IN_NOTEBOOK = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)


def fields(done: int, elapsed: float, step: int, steps: int, loss: float | None) -> dict[str, str]:
    """The bar's own fields after `done` steps in `elapsed` seconds, at `step` of `steps`."""
    if not done or loss is None:
        return {"ms_per_step": "?", "loss": "?", "time_left": "?"}
    ms = 1000 * elapsed / done
    left = ms * (steps - step) / 1000
    return {"ms_per_step": f"{ms:.0f}", "loss": f"{loss:.4f}", "time_left": f"{int(left // 60)}:{int(left % 60):02d}"}


class LiveBar(tqdm):
    """tqdm's bar with the loss and the fields above."""

    loss: float | None = None

    @property
    def format_dict(self) -> dict[str, Any]:
        values = super().format_dict
        done = values["n"] - values["initial"]
        return {**values, **fields(done, values["elapsed"], values["n"], values["total"], self.loss)}


def terminal_shape(out: TextIO) -> dict[str, int]:
    """tqdm's ncols and nrows for a terminal: one column and row short of its size (a full line wraps on
    some terminals). A terminal that reports no size (a pty nobody sized) gets the line whole: tqdm would
    take its 0 x 0 as room for nothing and draw an empty line."""
    try:
        columns, lines = os.get_terminal_size(out.fileno())
    except (AttributeError, ValueError, OSError):
        columns, lines = 0, 0
    return {"ncols": columns - 1 if columns > 1 else 1000, "nrows": lines - 1 if lines > 1 else 1000}


def redraws(out: TextIO) -> bool:
    """Whether `out` shows a bar redrawn in place: a terminal, or a notebook cell's own output."""
    if hasattr(out, "isatty") and out.isatty():
        return True
    return IN_NOTEBOOK and any(out is stream for stream in (sys.stdout, sys.stderr))


class EpochProgress:
    """The bar of one epoch, from step `start` (a resume starts mid-epoch) to `steps`: redrawn by tqdm where
    `redraws(out)`, else written whole as a line every tenth of the epoch and at its last step."""

    def __init__(self, out: TextIO, epoch: int, epochs: int, steps: int, start: int = 0):
        self.out, self.steps, self.start = out, steps, start
        self.desc = f"epoch {epoch + 1}/{epochs}"
        self.every = max(1, steps // 10)
        self.started = time.perf_counter()
        self.bar = None
        if redraws(out):
            # A notebook's widget takes the cell's width; a terminal's line is cut to fit it.
            shape = {"bar_format": WIDGET} if IN_NOTEBOOK else {"bar_format": LINE, **terminal_shape(out)}
            self.bar = LiveBar(total=steps, initial=start, desc=self.desc, ascii=".#", file=out, leave=True, **shape)

    def update(self, step: int, loss: float) -> None:
        """`step` of the epoch is done; `loss` is the epoch's running mean."""
        if self.bar is not None:
            self.bar.loss = loss
            self.bar.update(step - self.bar.n)
            return
        if step % self.every and step != self.steps:
            return
        done, elapsed = step - self.start, time.perf_counter() - self.started
        text = tqdm.format_meter(
            step,
            self.steps,
            elapsed,
            prefix=self.desc,
            ascii=".#",
            bar_format=LINE,
            initial=self.start,
            **fields(done, elapsed, step, self.steps, loss),
        )
        self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def epoch_line(record: dict[str, Any], improved: bool) -> str:
    """The summary of an epoch's record: `epoch 2: train loss 2.3033, val loss 2.2017 (3.176 bits/char,
    chunks), 2.3 s (110 ms/step) *best*`."""
    val_loss, protocol = record["val_loss"], record["val_protocol"]
    val_text = ""
    if val_loss is not None:
        val_text = f", val loss {val_loss:.4f} ({val_loss / math.log(2):.3f} bits/char, {protocol})" + "".join(
            f", {name} {loss:.4f}" for name, loss in record["val_losses"].items() if name != protocol
        )
    return (
        f"epoch {record['epoch']}{'' if record['complete'] else ' (partial)'}: "
        f"train loss {record['train_loss']:.4f}{val_text}, "
        f"{record['seconds']:.1f} s ({record['ms_per_step']:.0f} ms/step)" + (" *best*" if improved else "")
    )


def untrained_line(loss: float, vocab_size: int) -> str:
    """The tutorial's sanity check: before training, the loss should be close to ln(vocab)."""
    return f"untrained loss {loss:.4f} (ln {vocab_size} = {math.log(vocab_size):.4f}: a uniform guess)"


def setup_lines(trainer: Trainer) -> list[str]:
    """Where and how the run trains, on what; under DDP, how each batch is split."""
    cfg, processes = trainer.config, distributed.world_size()
    lines = [
        f"training on {trainer.device.type} ({trainer.precision}, {torch.get_num_threads()} threads): "
        f"{len(trainer.batches)} steps/epoch, batch {cfg.batch_size} x {cfg.seq_len}, "
        f"{len(trainer.batches.ids):,} train / {len(trainer.val_ids):,} val characters -> {trainer.run_dir}"
    ]
    if processes > 1:
        lines.append(f"DDP: {processes} processes, {cfg.batch_size // processes} rows of each batch per process")
    return lines
