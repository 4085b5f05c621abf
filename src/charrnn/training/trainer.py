"""Training: the tutorial's loop (Adam, cross-entropy from logits, a checkpoint every epoch), made
resumable and observable.

Use `Trainer.create(...)` / `Trainer.resume(...)` and `fit()`, or build your own loop from the pieces:
`trainer.batches.epoch(e)`, `trainer.train_step(inputs, targets)`, `trainer.evaluate()` and
`trainer.save_checkpoint()`. Callbacks are given to `create` or `resume`; `fit()` calls their
`on_step(trainer, loss)` after each step and `on_epoch_end(trainer, record)` after each epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.config import TrainConfig, also_protocols
from charrnn.data.batches import Batches, Streams
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError, WriteError
from charrnn.model.network import CharRNN
from charrnn.model.precision import precision_name, resolve_device, resolve_precision
from charrnn.model.summary import summary
from charrnn.storage import run as run_folder
from charrnn.storage.files import DirectoryLock
from charrnn.training import checkpoint, distributed, runs, stopping
from charrnn.training import optimizer as regularize
from charrnn.training.log import RunLog, epoch_record, step_record
from charrnn.training.progress import EpochProgress, epoch_line, setup_lines, untrained_line
from charrnn.training.validation import Validation


class Callback:
    """Override what you need; `fit` calls these after each step and each epoch."""

    def on_step(self, trainer: Trainer, loss: float) -> None: ...

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None: ...


@dataclass
class FitResult:
    status: str  # "finished", "early_stopped", "max_steps", "max_minutes" or "interrupted"
    epoch: int
    global_step: int
    best_val_loss: float | None


class Trainer:
    """Owns the model, optimizer, data and run directory of one training run."""

    def __init__(
        self,
        run_dir: Path,
        model: CharRNN,
        vocab: Vocab,
        train_ids: np.ndarray,
        val_ids: np.ndarray,
        config: TrainConfig,
        callbacks: Sequence[Callback] = (),
        out: TextIO | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.config = config
        self.vocab = vocab
        self.device = distributed.setup(resolve_device(config.device))  # this rank's device under DDP
        self.model = model.to(self.device)
        self.model.compute_dtype = resolve_precision(config.precision, self.device)
        self.precision = precision_name(self.model.compute_dtype)
        self.optimizer = regularize.optimizer(self.model, config)
        # The weight average (ema > 0): what validation scores and the weight files hold.
        self.average = regularize.WeightAverage(self.model, config.ema) if config.ema else None
        if config.stateful and distributed.world_size() > 1:
            raise CharRNNError(
                "--stateful does not combine with several processes (--nproc/torchrun) yet; train it in one process"
            )
        self.ddp = distributed.wrap(self.model, self.device)  # what training steps call: DDP when N > 1
        self.shard = distributed.shard(config.batch_size)  # this rank's rows of each global batch
        self.main = distributed.is_main()  # only rank 0 writes the run directory and progress
        self.batches = (Streams if config.stateful else Batches)(
            train_ids, config.batch_size, config.seq_len, config.seed
        )
        self.carried: torch.Tensor | None = None  # stateful: the state at the end of the last batch, detached
        self.validation = Validation(val_ids, config)  # what evaluate() scores
        self.val_ids, self.eval_ids, self.protocols = val_ids, self.validation.sample, self.validation.protocols
        self.callbacks = list(callbacks)
        self.out = out if out is not None else sys.stderr
        if not self.main:
            self.out = open(os.devnull, "w")
        # Position: `epoch` is the epoch in progress, `step_in_epoch` the steps of it already done.
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.epoch_loss_sum = 0.0
        self.best_val_loss: float | None = None
        self.bad_epochs = 0
        self.elapsed = 0.0  # seconds spent in fit(), across resumes: what --max-minutes limits
        self.checkpoint_step: int | None = None  # global step of the last checkpoint on disk
        self.stop = stopping.StopRequest()  # set by Ctrl-C, SIGTERM or request_stop()
        self.lock: DirectoryLock | None = None  # held while this trainer may write the run directory
        self.log = RunLog(self.run_dir, config.tensorboard, writes=self.main)  # metrics.jsonl, TensorBoard, plot
        self._mark = time.perf_counter()

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        run_dir: str | Path,
        config: TrainConfig | None = None,
        model: dict[str, Any] | None = None,
        data_dir=None,
        callbacks: Sequence[Callback] = (),
        out: TextIO | None = None,
        plan: dict[str, Any] | None = None,
    ) -> Trainer:
        """Start a new run in `run_dir` (which must not hold one). `model`: ModelConfig fields except
        vocab_size, which comes from the text. `config`: TrainConfig() when None. `plan`: what chose the
        settings (planner.plan_run), recorded in config.json."""
        run_dir = Path(run_dir)
        config = config if config is not None else TrainConfig()
        make = functools.partial(cls, run_dir, callbacks=callbacks, out=out)
        return runs.create(run_dir, config, model, data_dir, make, plan)

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        data_dir=None,
        callbacks: Sequence[Callback] = (),
        out: TextIO | None = None,
        **overrides: Any,
    ) -> Trainer:
        """Continue a run exactly where its last checkpoint left it. Only the stopping criteria and the
        housekeeping may change: epochs, max_steps, max_minutes, patience, device, precision,
        checkpoint_every, log_every, tensorboard, val_also."""
        run_dir = Path(run_dir)
        make = functools.partial(cls, run_dir, callbacks=callbacks, out=out)
        return runs.resume(run_dir, data_dir, make, overrides)

    # -- the pieces of the loop ---------------------------------------------------------------------
    def planned_steps(self) -> int:
        return self.config.max_steps or self.config.epochs * len(self.batches)

    def learning_rate(self) -> float:
        """The learning rate for the next step under the configured schedule."""
        return regularize.learning_rate(self.config, self.global_step, self.planned_steps())

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        """One optimizer step on a batch (batch, time) of inputs and targets; returns the loss (under DDP:
        this rank takes its rows of the global batch, and the loss returned is the global batch's)."""
        distributed.fault_hook(self.global_step)
        inputs, targets = inputs[self.shard], targets[self.shard]
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        # Stateful: the first batch of an epoch starts from zeros (the streams moved), later ones carry on.
        state = self.carried if self.config.stateful and self.step_in_epoch else None
        logits, new_state = self.ddp(inputs.to(self.device), state)  # (batch, time, vocab)
        if self.config.stateful:
            self.carried = new_state.detach()  # truncated BPTT: no gradient into the previous batch
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.model)
        return distributed.mean(loss)

    @property
    def scored_model(self) -> CharRNN:
        """The weights validation scores and the weight files hold: the average when ema > 0."""
        return self.model if self.average is None else self.average.module

    def evaluate_protocols(self, protocols=None) -> dict[str, float] | None:
        """{protocol: validation loss in nats/char} (None without a validation split); by default
        val_protocol first, then val_also's."""
        return self.validation.losses(self.scored_model, protocols)

    def evaluate(self, ids: np.ndarray | None = None) -> float | None:
        """Validation loss in nats/char (None when the run has no validation split): on the fixed
        sample of at most `eval_chars` characters unless `ids` are given."""
        return self.validation.loss(self.scored_model, ids)

    def _validate(self) -> dict[str, float] | None:
        """{protocol: loss}: evaluate() for the criterion (val_protocol), then val_also's others."""
        val_loss = self.evaluate()
        if val_loss is None:
            return None
        others = [p for p in also_protocols(self.config.val_also) if p != self.config.val_protocol]
        return {self.config.val_protocol: val_loss, **(self.evaluate_protocols(others) if others else {})}

    def save_checkpoint(self) -> None:
        """Write latest.safetensors and the resumable trainer state, both atomically (rank 0 only)."""
        if self.main:
            checkpoint.save(self)

    def acquire_lock(self) -> None:
        """Hold the run directory's lock (again, after close()). Under DDP only rank 0 writes, and locks."""
        if not self.main:
            return
        if self.lock is None:
            self.lock = DirectoryLock(self.run_dir)
        self.lock.acquire()

    def close(self) -> None:
        """Release the run directory's lock (fit() does this when it returns)."""
        try:
            self.log.close()
        finally:
            if self.lock is not None:
                self.lock.release()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def request_stop(self) -> None:
        """Stop after the current step, save, and return from fit() with status 'interrupted'."""
        self.stop.request()

    @property
    def stop_signal(self) -> int | None:
        """The signal that asked fit() to stop, if one did."""
        return self.stop.signum

    def say(self, text: str) -> None:
        """A line on the trainer's output (stderr unless `out` was given; nothing on DDP's other ranks)."""
        self.out.write(text + "\n")
        self.out.flush()

    def _fit_schedule(self) -> None:
        """fit_budget: move max_steps to what the rest of the budget holds (rank 0's figure on every rank),
        recorded in config.json so that a resume continues the same schedule."""
        total = distributed.from_main(stopping.steps_for_budget(self) if self.main else None)
        if total is None:
            return
        epochs = max(self.config.epochs, -(-total // len(self.batches)) + 1)
        self.config = dataclasses.replace(self.config, max_steps=total, epochs=epochs)
        if self.main:
            run_folder.update_train_config(self.run_dir, self.config)

    def _tick(self) -> float:
        """Add the time since the last tick to `elapsed`; returns it."""
        now = time.perf_counter()
        self.elapsed += now - self._mark
        self._mark = now
        return self.elapsed

    # -- the loop -----------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train until the epochs are done or a stop rule ends the run (max_steps, max_minutes, patience,
        request_stop, Ctrl-C, SIGTERM or SIGHUP), checkpointing as configured; releases the lock when it returns."""
        if (done := stopping.nothing_to_do(self)) is not None:
            self.say(done)
            self.close()
            status = "finished" if self.epoch >= self.config.epochs else "max_steps"
            return FitResult(status, self.epoch, self.global_step, self.best_val_loss)
        self._introduce()
        status = "finished"
        try:
            with self.stop.handling():
                self._mark = time.perf_counter()
                self.acquire_lock()
                while self.epoch < self.config.epochs and status == "finished":
                    status = self._fit_epoch()
        except WriteError as exc:
            raise CharRNNError(checkpoint.write_failure(exc, self.checkpoint_step, self.run_dir)) from None
        finally:
            self.close()
        return FitResult(status, self.epoch, self.global_step, self.best_val_loss)

    def _introduce(self) -> None:
        """The lines before the first epoch: on a new run the model and its untrained loss, then the set-up."""
        if self.global_step == 0:
            self.say(summary(self.model))
            self.say(untrained_line(self._untrained_loss(*next(self.batches.epoch(0))), len(self.vocab)))
        for line in setup_lines(self):
            self.say(line)

    def _fit_epoch(self) -> str:
        """The rest of the current epoch and its end; returns "finished" to go on, or why the run stops."""
        cfg = self.config
        started = time.perf_counter()
        progress = EpochProgress(self.out, self.epoch, cfg.epochs, len(self.batches), self.step_in_epoch)
        status = "finished"
        for inputs, targets in self.batches.epoch(self.epoch, start=self.step_in_epoch):
            loss = self.train_step(inputs, targets)
            self.step_in_epoch += 1
            self.global_step += 1
            self.epoch_loss_sum += loss
            progress.update(self.step_in_epoch, self.epoch_loss_sum / self.step_in_epoch)  # running mean
            for callback in self.callbacks:
                callback.on_step(self, loss)
            if self.global_step % cfg.log_every == 0:
                self.log.write(step_record(self, loss, self._tick()))
            status = stopping.after_step(self, self._tick)
            if status != "finished":
                break
            if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                self._fit_schedule()
                self.save_checkpoint()
        progress.close()
        if status == "interrupted":
            if (notice := self.stop.notice()) is not None:
                self.say(notice)
            self.save_checkpoint()
            # The other ranks wait for rank 0's checkpoint: torchrun stops every rank (with a signal that
            # would cut the save short) as soon as one exits.
            distributed.barrier()
        else:
            self._end_epoch(time.perf_counter() - started, complete=status == "finished")
            if status == "finished" and cfg.patience and self.bad_epochs >= cfg.patience:
                status = "early_stopped"
        if status != "finished":
            self.say(stopping.stopped_line(status, self))
        return status

    def _end_epoch(self, seconds: float, complete: bool) -> dict[str, Any]:
        """Validate, keep the best weights, log the epoch's record, checkpoint, plot, say the summary line,
        then tell the callbacks. A partial epoch (a stop rule ended it) is scored and logged the same way."""
        # Rank 0 scores and tells the others, so every rank takes the same early-stopping decision.
        losses = distributed.from_main(self._validate() if self.main else None)
        record = epoch_record(self, seconds, complete, losses)
        val_loss = record["val_loss"]
        improved = val_loss is not None and (self.best_val_loss is None or val_loss < self.best_val_loss)
        if improved:
            self.best_val_loss, self.bad_epochs = val_loss, 0
            if self.main:
                checkpoint.save_best(self)
        elif val_loss is not None and complete:
            self.bad_epochs += 1
        if complete:
            self.epoch, self.step_in_epoch, self.epoch_loss_sum = self.epoch + 1, 0, 0.0
        record["elapsed"] = self._tick()  # wall time so far, evaluation included
        self.log.write(record)
        self._fit_schedule()
        self.save_checkpoint()
        self.log.plot()
        self.say(epoch_line(record, improved))
        for callback in self.callbacks:
            callback.on_epoch_end(self, record)
        return record

    @torch.inference_mode()
    def _untrained_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        # The tutorial's sanity check: before training, the loss should be close to ln(vocab).
        self.model.eval()
        logits, _ = self.model(inputs.to(self.device))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().to(self.device)).item()
