"""Training: the tutorial's loop (Adam, cross-entropy from logits, a checkpoint every epoch), made
resumable and observable.

Use `Trainer.create(...)` / `Trainer.resume(...)` and `fit()`, or build your own loop from the pieces:
`trainer.batches.epoch(e)`, `trainer.train_step(inputs, targets)`, `trainer.evaluate()` and
`trainer.save_checkpoint()`. Callbacks get `on_step(trainer, loss)` and `on_epoch_end(trainer, record)`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.config import ModelConfig, TrainConfig, also_protocols
from charrnn.data.batches import Batches, Streams, eval_sample, split
from charrnn.data.prepare import prepare
from charrnn.data.sources import BUILTINS, looks_like_url
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError, WriteError
from charrnn.model import weights as weight_files
from charrnn.model.network import CharRNN
from charrnn.model.precision import precision_name, resolve_device, resolve_precision
from charrnn.model.scoring import Protocols, evaluate
from charrnn.model.summary import summary
from charrnn.storage import run as run_folder
from charrnn.storage.files import DirectoryLock, append_text, atomic_write_text, remove_stale_temporaries
from charrnn.training import distributed, finetune
from charrnn.training import optimizer as regularize
from charrnn.training.plot import plot_losses
from charrnn.training.tensorboard import EventLog


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


class Progress:
    """One line per epoch, redrawn in place on a terminal; a few plain lines per epoch otherwise."""

    def __init__(self, out: TextIO, epoch: int, epochs: int, steps: int):
        self.out, self.epoch, self.epochs, self.steps = out, epoch, epochs, steps
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.every = max(1, steps // 10)
        self.started = time.perf_counter()
        self.done = 0

    def update(self, step: int, loss: float) -> None:
        self.done += 1
        if not self.tty and step % self.every and step != self.steps:
            return
        elapsed = time.perf_counter() - self.started
        ms = 1000 * elapsed / self.done
        eta = ms * (self.steps - step) / 1000
        width = 24
        filled = int(width * step / self.steps)
        bar = "#" * filled + "." * (width - filled)
        line = (
            f"epoch {self.epoch + 1}/{self.epochs} [{bar}] {step}/{self.steps} "
            f"{ms:.0f} ms/step loss {loss:.4f} ETA {int(eta // 60)}:{int(eta % 60):02d}"
        )
        self.out.write(("\r" + line) if self.tty else (line + "\n"))
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


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
        self.val_ids = val_ids
        # chunks scores a fixed sample of at most eval_chars characters spread over the split; stateful
        # the split's first eval_chars characters (a stream must be contiguous); windows draws its
        # windows from the whole split (its cost is set by eval_windows, not by the split's size).
        self.eval_ids = eval_sample(val_ids, config.eval_chars, config.seq_len)  # what evaluate() scores
        self.protocols = Protocols(
            seq_len=config.seq_len,
            batch_size=config.batch_size,
            windows=config.eval_windows,
            window_len=config.eval_window_len,
        )
        if len(val_ids) and len(val_ids) < 2:
            raise CharRNNError("the validation part is too short to score; raise --val-fraction or set it to 0")
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
        self.stop_signal: int | None = None  # the signal that asked fit() to stop, if one did
        self.lock: DirectoryLock | None = None  # held while this trainer may write the run directory
        self.events = EventLog(self.run_dir, config.tensorboard)  # TensorBoard scalars, beside metrics.jsonl
        self._stop_requested = False
        self._mark = time.perf_counter()

    # -- construction -------------------------------------------------------------------------------
    @staticmethod
    def _load_data(config: TrainConfig, data_dir=None, vocab: Vocab | None = None):
        """The text's ids in `vocab` (a fine-tuned run's, which holds every character of the text) or in
        the text's own sorted vocabulary."""
        # Streamed into a cached .npy and memory-mapped: the ids are never all in memory (prepare.py).
        corpus = prepare(
            config.text,
            encoding=config.encoding,
            skip_chars=config.skip_chars,
            data_dir=data_dir,
            decode_errors=config.decode_errors,
        )
        distributed.check_same_text(corpus.sha256, len(corpus.vocab))  # each machine prepared its own copy
        ids = corpus.ids if vocab is None or vocab == corpus.vocab else finetune.remap(corpus.ids, corpus.vocab, vocab)
        train_ids, val_ids = split(ids, config.val_fraction)
        return corpus, vocab or corpus.vocab, train_ids, val_ids

    @classmethod
    def create(
        cls,
        run_dir: str | Path,
        config: TrainConfig | None = None,
        model: dict[str, Any] | None = None,
        data_dir=None,
        callbacks: Sequence[Callback] = (),
        out: TextIO | None = None,
    ) -> Trainer:
        """Start a new run in `run_dir` (which must not hold one). `model`: ModelConfig fields except
        vocab_size, which comes from the text. `config`: TrainConfig() when None."""
        run_dir = Path(run_dir)
        config = config if config is not None else TrainConfig()
        distributed.setup(resolve_device(config.device))
        cls._check_new_run_dir(run_dir)
        distributed.barrier()  # every rank has checked before rank 0 writes
        text = config.text
        if text not in BUILTINS and not looks_like_url(text):
            # Absolute, so `--resume` works from any working directory.
            config = dataclasses.replace(config, text=str(Path(text).expanduser().absolute()))
        source = started_from = None
        if config.init_from:
            config = dataclasses.replace(config, init_from=str(Path(config.init_from).expanduser().absolute()))
            source = finetune.read_source(config.init_from)
            started_from = source.record
            vocab = source.vocab.extend(
                prepare(
                    config.text,
                    encoding=config.encoding,
                    skip_chars=config.skip_chars,
                    data_dir=data_dir,
                    decode_errors=config.decode_errors,
                ).vocab
            )
            corpus, vocab, train_ids, val_ids = cls._load_data(config, data_dir, vocab)
            model_config = finetune.model_config(source, vocab, model or {})
            initial = finetune.initial_model(model_config, source, config.seed)
        else:
            corpus, vocab, train_ids, val_ids = cls._load_data(config, data_dir)
            model_config = ModelConfig(vocab_size=len(vocab), **(model or {}))
            torch.manual_seed(config.seed)
            initial = CharRNN(model_config)
        trainer = cls(run_dir, initial, vocab, train_ids, val_ids, config, callbacks, out)
        if source is not None:
            added = len(vocab) - len(source.vocab)
            trainer._say(
                f"starting from {config.init_from} (step {source.record['step']}); "
                f"{added} new character(s) added to its {len(source.vocab)}"
            )
        if not trainer.main:
            return trainer
        # Everything is validated; only now is anything written.
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(run_dir, exc) from None
        trainer._ensure_lock()
        try:
            cls._check_new_run_dir(run_dir)  # again, under the lock: another process may have started one
            remove_stale_temporaries(run_dir)
            vocab.save(run_dir / run_folder.VOCAB)
            run_folder.save_config(
                run_dir,
                model_config,
                config,
                {
                    "name": corpus.name,
                    "source": corpus.source,
                    "chars": corpus.chars,
                    "sha256": corpus.sha256,
                    "train_chars": int(len(train_ids)),
                    "val_chars": int(len(val_ids)),
                },
                started_from=started_from,
            )
        except BaseException:
            trainer.close()
            raise
        return trainer

    _check_new_run_dir = staticmethod(run_folder.check_new_run_dir)

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
        model_config, config, corpus_info = run_folder.load_config(run_dir)
        allowed = {
            "epochs",
            "max_steps",
            "max_minutes",
            "patience",
            "device",
            "precision",
            "checkpoint_every",
            "log_every",
            "tensorboard",
            "val_also",
        }
        changed = sorted(k for k, v in overrides.items() if getattr(config, k, object()) != v and k not in allowed)
        if changed:
            raise CharRNNError(
                f"cannot change {', '.join(changed)} when resuming; only {', '.join(sorted(allowed))} may change"
            )
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if k in allowed})
        distributed.setup(resolve_device(config.device))
        # Rank 0 locks before reading the state another trainer may be writing; only it writes.
        lock = DirectoryLock(run_dir).acquire() if distributed.is_main() else None
        try:
            if lock is not None:
                remove_stale_temporaries(run_dir)  # left by a writer killed mid-checkpoint; we hold the lock
            trainer = cls._restore(run_dir, model_config, config, corpus_info, data_dir, callbacks, out)
            trainer.lock = lock
            if trainer.main:
                trainer._truncate_metrics()
                run_folder.save_config(
                    run_dir, model_config, config, corpus_info, run_folder.load_started_from(run_dir)
                )
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return trainer

    @classmethod
    def _restore(
        cls,
        run_dir: Path,
        model_config: ModelConfig,
        config: TrainConfig,
        corpus_info: dict[str, Any],
        data_dir,
        callbacks: Sequence[Callback],
        out: TextIO | None,
    ) -> Trainer:
        run_vocab = Vocab.load(run_dir / run_folder.VOCAB, "it must be the run's own; restore it from a backup")
        state_path = run_dir / run_folder.TRAINER_STATE
        started_from = run_folder.load_started_from(run_dir)
        if started_from and started_from.get("kind") == "tensorflow" and not state_path.is_file():
            raise CharRNNError(
                f"{run_dir} is an imported model, not a training run; train on from it with "
                f"`charrnn train --init-from {run_dir} --text TEXT --run NEW_RUN`"
            )
        prepared = prepare(
            config.text,
            encoding=config.encoding,
            skip_chars=config.skip_chars,
            data_dir=data_dir,
            decode_errors=config.decode_errors,
        )
        if corpus_info.get("sha256") and prepared.sha256 != corpus_info["sha256"]:
            raise CharRNNError(
                f"the training text {config.text} changed since this run started; resume needs the same text"
            )
        # A fine-tuned run's vocabulary is its source's plus the text's new characters; a new run's is the text's.
        if run_vocab.unknown("".join(prepared.vocab.chars)) if config.init_from else run_vocab != prepared.vocab:
            raise CharRNNError(
                f"{run_dir}/vocab.json does not match the training text; restore the run's own vocab.json"
            )
        corpus, vocab, train_ids, val_ids = cls._load_data(config, data_dir, run_vocab)
        if not state_path.is_file():
            # Stopped before its first checkpoint: start again from step 0, exactly as `create` did.
            if config.init_from:
                initial = finetune.initial_model(model_config, finetune.read_source(config.init_from), config.seed)
            else:
                torch.manual_seed(config.seed)
                initial = CharRNN(model_config)
            trainer = cls(run_dir, initial, vocab, train_ids, val_ids, config, callbacks, out)
            trainer._say(f"{run_dir} stopped before its first checkpoint: starting it again from step 0")
            return trainer
        model = CharRNN(model_config)
        state = weight_files.load_trainer_state(state_path, model, regularize.parameter_order(model, config))
        model.load_state_dict(state["model"])
        trainer = cls(run_dir, model, vocab, train_ids, val_ids, config, callbacks, out)
        fix = f"delete {state_path.name} to restart this run from step 0, or restore it from a backup"
        try:
            trainer.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            if state.get("cuda_rng") is not None and torch.cuda.is_available():
                # A state saved with more GPUs than this machine has: each device takes its own.
                torch.cuda.set_rng_state_all(list(state["cuda_rng"])[: torch.cuda.device_count()])
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
            raise CharRNNError(f"{state_path} is damaged ({str(exc).splitlines()[0]}); {fix}") from None
        for name in (
            "epoch",
            "step_in_epoch",
            "global_step",
            "epoch_loss_sum",
            "best_val_loss",
            "bad_epochs",
            "elapsed",
        ):
            setattr(trainer, name, state[name])
        try:
            if config.stateful and trainer.step_in_epoch:
                trainer.carried = weight_files.carried_state(state, model, config.batch_size).to(trainer.device)
            if trainer.average is not None:
                if state.get("average") is None:
                    raise ValueError("no weight average saved, though the run has ema > 0")
                trainer.average.load_state_dict(state["average"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CharRNNError(f"{state_path} is damaged ({str(exc).splitlines()[0]}); {fix}") from None
        if trainer.step_in_epoch > len(trainer.batches):
            raise CharRNNError(
                f"{state_path} is damaged (step {trainer.step_in_epoch} of an epoch of {len(trainer.batches)}); {fix}"
            )
        trainer.checkpoint_step = trainer.global_step
        return trainer

    # -- the pieces of the loop ---------------------------------------------------------------------
    def planned_steps(self) -> int:
        return self.config.max_steps or self.config.epochs * len(self.batches)

    def learning_rate(self) -> float:
        """The learning rate for the next step under the configured schedule."""
        cfg = self.config
        if cfg.lr_schedule == "constant":
            return cfg.lr
        progress = min(1.0, self.global_step / max(1, self.planned_steps()))
        low = cfg.lr / 10
        return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * progress))

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
        if len(self.val_ids) < 2:
            return None
        names = protocols or dict.fromkeys([self.config.val_protocol, *also_protocols(self.config.val_also)])
        result = {}
        for name in names:
            ids = {"chunks": self.eval_ids, "windows": self.val_ids}.get(name)
            if ids is None:  # stateful: a contiguous stretch
                ids = self.val_ids[: self.config.eval_chars] if self.config.eval_chars else self.val_ids
            result[name] = evaluate(self.scored_model, ids, name, self.protocols)
        return result

    def evaluate(self, ids: np.ndarray | None = None) -> float | None:
        """Validation loss in nats/char (None when the run has no validation split): on the fixed
        sample of at most `eval_chars` characters unless `ids` are given."""
        if ids is None:
            losses = self.evaluate_protocols([self.config.val_protocol])
            return None if losses is None else losses[self.config.val_protocol]
        if len(ids) < 2:
            return None
        return evaluate(self.scored_model, ids, self.config.val_protocol, self.protocols)

    def _validate(self) -> dict[str, float] | None:
        """{protocol: loss}: evaluate() for the criterion (val_protocol), then val_also's others."""
        val_loss = self.evaluate()
        if val_loss is None:
            return None
        others = [p for p in also_protocols(self.config.val_also) if p != self.config.val_protocol]
        return {self.config.val_protocol: val_loss, **(self.evaluate_protocols(others) if others else {})}

    def save_checkpoint(self) -> None:
        """Write latest.safetensors and the resumable trainer state, both atomically (rank 0 only)."""
        if not self.main:
            return
        state = {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_loss_sum": self.epoch_loss_sum,
            "best_val_loss": self.best_val_loss,
            "bad_epochs": self.bad_epochs,
            "elapsed": self.elapsed,
            "rng": torch.get_rng_state(),
        }
        if self.carried is not None:
            state["carried"] = self.carried.detach().cpu().clone()
        if self.average is not None:
            state["average"] = self.average.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        self._ensure_lock()
        weight_files.save_trainer_state(self.run_dir / run_folder.TRAINER_STATE, state)
        self.checkpoint_step = self.global_step  # what --resume starts from, even if the next write fails
        weight_files.save_weights(
            self.run_dir / run_folder.LATEST, self.scored_model, epoch=self.epoch, step=self.global_step
        )

    def _ensure_lock(self) -> None:
        if not self.main:
            return  # under DDP only rank 0 writes, and holds the lock
        if self.lock is None:
            self.lock = DirectoryLock(self.run_dir)
        self.lock.acquire()

    def close(self) -> None:
        """Release the run directory's lock (fit() does this when it returns)."""
        try:
            self.events.close()
        finally:
            if self.lock is not None:
                self.lock.release()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- bookkeeping --------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        append_text(self.run_dir / run_folder.METRICS, json.dumps(record) + "\n")
        self.events.write(record)

    def _truncate_metrics(self) -> None:
        # Lines written after the checkpoint we resume from describe steps that will be redone.
        kept = [r for r in run_folder.read_metrics(self.run_dir) if r.get("step", 0) <= self.global_step]
        atomic_write_text(self.run_dir / run_folder.METRICS, "".join(json.dumps(r) + "\n" for r in kept))
        self.events.resume_at(self.global_step)

    def _tick(self) -> float:
        """Add the time since the last tick to `elapsed`; returns it."""
        now = time.perf_counter()
        self.elapsed += now - self._mark
        self._mark = now
        return self.elapsed

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _end_epoch(self, seconds: float, complete: bool) -> dict[str, Any]:
        steps = self.step_in_epoch
        train_loss = self.epoch_loss_sum / steps if steps else float("nan")
        # Rank 0 scores and tells the others, so every rank takes the same early-stopping decision.
        losses = distributed.from_main(self._validate() if self.main else None)
        val_loss = None if losses is None else losses[self.config.val_protocol]
        record = {
            "kind": "epoch",
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "complete": complete,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_protocol": self.config.val_protocol,
            "val_losses": losses,
            "val_bits_per_char": None if val_loss is None else val_loss / math.log(2),
            "seconds": seconds,
            "ms_per_step": 1000 * seconds / max(1, steps),
            "precision": self.precision,
            "elapsed": None,
            "lr": self.learning_rate(),
            "val_chars_scored": int(len(self.eval_ids)),
        }
        improved = val_loss is not None and (self.best_val_loss is None or val_loss < self.best_val_loss)
        if improved:
            self.best_val_loss, self.bad_epochs = val_loss, 0
            if self.main:
                weight_files.save_weights(
                    self.run_dir / run_folder.BEST,
                    self.scored_model,
                    epoch=self.epoch + 1,
                    step=self.global_step,
                    val_loss=val_loss,
                    val_protocol=self.config.val_protocol,
                )
        elif val_loss is not None and complete:
            self.bad_epochs += 1
        if complete:
            self.epoch, self.step_in_epoch, self.epoch_loss_sum = self.epoch + 1, 0, 0.0
        record["elapsed"] = self._tick()  # wall time so far, evaluation included
        self._log(record)
        self.save_checkpoint()
        if self.main:
            plot_losses(run_folder.read_metrics(self.run_dir), self.run_dir / run_folder.PLOT)
        val_text = (
            ""
            if val_loss is None
            else (
                f", val loss {val_loss:.4f} ({val_loss / math.log(2):.3f} bits/char, {self.config.val_protocol})"
                + "".join(f", {name} {loss:.4f}" for name, loss in losses.items() if name != self.config.val_protocol)
            )
        )
        self._say(
            f"epoch {record['epoch']}{'' if complete else ' (partial)'}: train loss {train_loss:.4f}{val_text}, "
            f"{seconds:.1f} s ({record['ms_per_step']:.0f} ms/step)" + (" *best*" if improved else "")
        )
        for callback in self.callbacks:
            callback.on_epoch_end(self, record)
        return record

    def _on_signal(self, signum, frame) -> None:
        # Ctrl-C and SIGTERM (kill, systemd, a job scheduler) both finish the step and save; a second
        # one stops at once: Ctrl-C as KeyboardInterrupt, SIGTERM by its default action (exit 143).
        if self._stop_requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        # Only flags here: writing to stderr from a handler can land inside the progress bar's own write
        # (a reentrant-write RuntimeError); the loop says it once it sees the flag.
        self._stop_requested, self.stop_signal = True, signum

    def request_stop(self) -> None:
        """Stop after the current step, save, and return from fit() with status 'interrupted'."""
        self._stop_requested = True

    # -- the loop -----------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        cfg = self.config
        steps = len(self.batches)
        if self.epoch >= cfg.epochs:
            self._say(
                f"the run already finished {self.epoch} epoch(s); pass --epochs N (N > {self.epoch}) to train longer"
            )
            self.close()
            return FitResult("finished", self.epoch, self.global_step, self.best_val_loss)
        if self.global_step == 0:
            self._say(summary(self.model))
            inputs, targets = next(self.batches.epoch(0))
            untrained = self._untrained_loss(inputs, targets)
            self._say(
                f"untrained loss {untrained:.4f} (ln {len(self.vocab)} = {math.log(len(self.vocab)):.4f}: a uniform guess)"
            )
        self._say(
            f"training on {self.device.type} ({self.precision}, {torch.get_num_threads()} threads): {steps} steps/epoch, batch {cfg.batch_size} x {cfg.seq_len}, "
            f"{len(self.batches.ids):,} train / {len(self.val_ids):,} val characters -> {self.run_dir}"
        )
        if distributed.world_size() > 1:
            self._say(
                f"DDP: {distributed.world_size()} processes, {cfg.batch_size // distributed.world_size()} rows of each batch per process"
            )
        handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        self._mark = time.perf_counter()
        status = "finished"
        try:
            self._ensure_lock()
            while self.epoch < cfg.epochs:
                started = time.perf_counter()
                progress = Progress(self.out, self.epoch, cfg.epochs, steps)
                for inputs, targets in self.batches.epoch(self.epoch, start=self.step_in_epoch):
                    loss = self.train_step(inputs, targets)
                    self.step_in_epoch += 1
                    self.global_step += 1
                    self.epoch_loss_sum += loss
                    progress.update(self.step_in_epoch, self.epoch_loss_sum / self.step_in_epoch)  # running mean
                    for callback in self.callbacks:
                        callback.on_step(self, loss)
                    if self.global_step % cfg.log_every == 0:
                        self._log(
                            {
                                "kind": "step",
                                "epoch": self.epoch + 1,
                                "step": self.global_step,
                                "loss": loss,
                                "lr": self.learning_rate(),
                                "elapsed": self._tick(),
                                "precision": self.precision,
                            }
                        )
                    if distributed.any_rank(self._stop_requested):  # all ranks stop at the same step
                        status = "interrupted"
                        if self.stop_signal is not None:
                            name = (
                                "Ctrl-C" if self.stop_signal == signal.SIGINT else signal.Signals(self.stop_signal).name
                            )
                            self._say(
                                f"\n{name}: stopping after this step and saving a checkpoint "
                                f"({name} again stops at once, without saving)"
                            )
                        break
                    if cfg.max_steps and self.global_step >= cfg.max_steps:
                        status = "max_steps"
                        break
                    if cfg.max_minutes and distributed.any_rank(self._tick() >= 60 * cfg.max_minutes):
                        status = "max_minutes"
                        break
                    if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                        self.save_checkpoint()
                progress.close()
                if status == "interrupted":
                    self.save_checkpoint()
                    self._say(
                        f"interrupted at epoch {self.epoch + 1}, step {self.step_in_epoch}/{steps}; checkpoint saved. "
                        f"Resume with: charrnn train --resume {self.run_dir}"
                    )
                    break
                self._end_epoch(time.perf_counter() - started, complete=status not in ("max_steps", "max_minutes"))
                if status == "max_steps":
                    self._say(f"stopped at --max-steps {cfg.max_steps}")
                    break
                if status == "max_minutes":
                    self._say(f"stopped after --max-minutes {cfg.max_minutes:g} ({self.elapsed / 60:.1f} min)")
                    break
                if cfg.patience and self.bad_epochs >= cfg.patience:
                    status = "early_stopped"
                    self._say(
                        f"validation loss has not improved for {self.bad_epochs} epoch(s): stopping early (--patience {cfg.patience})"
                    )
                    break
        except WriteError as exc:
            raise CharRNNError(self._write_failure(exc)) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.close()
        return FitResult(status, self.epoch, self.global_step, self.best_val_loss)

    def _write_failure(self, exc: WriteError) -> str:
        """One line for a failed write: what failed, that the last checkpoint is intact, how to go on."""
        if self.checkpoint_step is None:
            saved = "no checkpoint was written yet (resuming starts from step 0)"
        else:
            saved = f"the last checkpoint (step {self.checkpoint_step}) is intact"
        return (
            f"{exc.reason} while writing {exc.path}; {saved}: {exc.action}, then resume with: "
            f"charrnn train --resume {self.run_dir}"
        )

    @torch.inference_mode()
    def _untrained_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        # The tutorial's sanity check: before training, the loss should be close to ln(vocab).
        self.model.eval()
        logits, _ = self.model(inputs.to(self.device))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().to(self.device)).item()
