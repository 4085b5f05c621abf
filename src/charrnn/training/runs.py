"""Starting a run in a new folder and continuing one from its folder: the checks, the lock, the data, the
first model (new or fine-tuned) and the restored trainer state.

Both take `make`, which builds the trainer from (model, vocab, train_ids, val_ids, config); `Trainer.create`
and `Trainer.resume` are the public way in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.batches import split
from charrnn.data.prepare import Prepared, prepare
from charrnn.data.sources import BUILTINS, check_recorded_url, looks_like_url
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError, WriteError
from charrnn.model import memory
from charrnn.model.network import CharRNN
from charrnn.model.precision import resolve_device
from charrnn.storage import run as run_folder
from charrnn.storage.files import DirectoryLock
from charrnn.training import checkpoint, distributed, finetune, stopping

if TYPE_CHECKING:
    from charrnn.training.trainer import Trainer

Make = Callable[[CharRNN, Vocab, np.ndarray, np.ndarray, TrainConfig], "Trainer"]

# What a resume may change: the stopping criteria and the housekeeping, never what the steps compute.
RESUMABLE = frozenset(
    {
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
        "fit_budget",
    }
)


def prepare_text(config: TrainConfig, data_dir=None) -> Prepared:
    # Streamed into a cached .npy and memory-mapped: the ids are never all in memory (prepare.py).
    return prepare(
        config.text,
        encoding=config.encoding,
        skip_chars=config.skip_chars,
        data_dir=data_dir,
        decode_errors=config.decode_errors,
    )


def load_data(config: TrainConfig, data_dir=None, vocab: Vocab | None = None):
    """(corpus, vocab, train_ids, val_ids): the text's ids in `vocab` (a fine-tuned run's, which holds every
    character of the text) or in the text's own sorted vocabulary."""
    corpus = prepare_text(config, data_dir)
    distributed.check_same_text(corpus.sha256, len(corpus.vocab))  # each machine prepared its own copy
    ids = corpus.ids if vocab is None or vocab == corpus.vocab else finetune.remap(corpus.ids, corpus.vocab, vocab)
    train_ids, val_ids = split(ids, config.val_fraction)
    return corpus, vocab or corpus.vocab, train_ids, val_ids


def create(
    run_dir: Path,
    config: TrainConfig,
    model: dict[str, Any] | None,
    data_dir,
    make: Make,
    plan: dict[str, Any] | None = None,
) -> Trainer:
    """A new run in `run_dir`, which must not hold one. Nothing is written until everything is checked.
    `plan`: config.json's record of the plan that chose the settings, if one did."""
    distributed.setup(resolve_device(config.device))
    run_folder.check_new_run_dir(run_dir)
    distributed.barrier()  # every rank has checked before rank 0 writes
    if config.text not in BUILTINS and not looks_like_url(config.text):
        # Absolute, so `--resume` works from any working directory.
        config = dataclasses.replace(config, text=str(Path(config.text).expanduser().absolute()))
    source = None
    if config.init_from:
        config = dataclasses.replace(config, init_from=str(Path(config.init_from).expanduser().absolute()))
        source = finetune.read_source(config.init_from)
        vocab = source.vocab.extend(prepare_text(config, data_dir).vocab)
        corpus, vocab, train_ids, val_ids = load_data(config, data_dir, vocab)
        model_config = finetune.model_config(source, vocab, model or {})
        memory.check_training(model_config, config.batch_size, config.seq_len)
        initial = finetune.initial_model(model_config, source, config.seed)
    else:
        corpus, vocab, train_ids, val_ids = load_data(config, data_dir)
        model_config = ModelConfig(vocab_size=len(vocab), **(model or {}))
        memory.check_training(model_config, config.batch_size, config.seq_len)  # before the run folder is made
        torch.manual_seed(config.seed)
        initial = CharRNN(model_config)
    trainer = make(initial, vocab, train_ids, val_ids, config)
    if source is not None:
        added = len(vocab) - len(source.vocab)
        trainer.say(
            f"starting from {config.init_from} (step {source.record['step']}); "
            f"{added} new character(s) added to its {len(source.vocab)}"
        )
    if trainer.main:
        corpus_info = {
            "name": corpus.name,
            "source": corpus.source,
            "chars": corpus.chars,
            "sha256": corpus.sha256,
            "train_chars": int(len(train_ids)),
            "val_chars": int(len(val_ids)),
        }
        _write_new_run(trainer, model_config, corpus_info, source.record if source is not None else None, plan)
    return trainer


def _write_new_run(
    trainer: Trainer,
    model_config: ModelConfig,
    corpus_info: dict[str, Any],
    started_from: dict[str, Any] | None,
    plan: dict[str, Any] | None,
) -> None:
    """The run folder with its vocabulary and config.json, written under the lock."""
    run_dir = trainer.run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(run_dir, exc) from None
    trainer.acquire_lock()
    try:
        run_folder.check_new_run_dir(run_dir)  # again, under the lock: another process may have started one
        run_folder.remove_temporaries(run_dir)
        trainer.vocab.save(run_dir / run_folder.VOCAB)
        run_folder.save_config(run_dir, model_config, trainer.config, corpus_info, started_from, plan)
    except BaseException:
        trainer.close()
        raise


def resume(run_dir: Path, data_dir, make: Make, overrides: dict[str, Any]) -> Trainer:
    """The run in `run_dir`, where its last checkpoint left it; `overrides` may change only RESUMABLE settings."""
    model_config, config, corpus_info = run_folder.load_config(run_dir)
    changed = sorted(k for k, v in overrides.items() if getattr(config, k, object()) != v and k not in RESUMABLE)
    if changed:
        raise CharRNNError(
            f"cannot change {', '.join(changed)} when resuming; only {', '.join(sorted(RESUMABLE))} may change"
        )
    check_recorded_url(config.text, overrides.get("text"), run_dir)  # a URL from a run folder needs a say-so
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if k in RESUMABLE})
    distributed.setup(resolve_device(config.device))
    # Rank 0 locks before reading the state another trainer may be writing; only it writes.
    lock = DirectoryLock(run_dir).acquire() if distributed.is_main() else None
    try:
        if lock is not None:
            run_folder.remove_temporaries(run_dir)  # left by a writer killed mid-checkpoint; we hold the lock
        trainer = _restore(run_dir, model_config, config, corpus_info, data_dir, make)
        trainer.lock = lock
        # A run already past its epochs or --max-steps trains nothing, and so writes nothing (fit says so).
        if trainer.main and stopping.nothing_to_do(trainer) is None:
            trainer.log.resume_at(trainer.global_step, trainer.epoch)
            started_from, plan = run_folder.load_started_from(run_dir), run_folder.load_plan(run_dir)
            run_folder.save_config(run_dir, model_config, config, corpus_info, started_from, plan)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return trainer


def _restore(
    run_dir: Path, model_config: ModelConfig, config: TrainConfig, corpus_info: dict[str, Any], data_dir, make: Make
) -> Trainer:
    fix = "it must be the run's own; restore it from a backup"
    run_vocab = Vocab.load(run_dir / run_folder.VOCAB, fix)
    run_vocab.check_sha256(run_folder.load_vocab_sha256(run_dir), run_dir / run_folder.VOCAB, run_folder.CONFIG, fix)
    state_path = run_dir / run_folder.TRAINER_STATE
    started_from = run_folder.load_started_from(run_dir)
    if started_from and started_from.get("kind") == "tensorflow" and not state_path.is_file():
        raise CharRNNError(
            f"{run_dir} is an imported model, not a training run; train on from it with "
            f"`charrnn train --init-from {run_dir} --text TEXT --run NEW_RUN`"
        )
    _check_same_text(run_dir, config, corpus_info, run_vocab, data_dir)
    _, vocab, train_ids, val_ids = load_data(config, data_dir, run_vocab)
    if not state_path.is_file():
        # Stopped before its first checkpoint: start again from step 0, exactly as `create` did.
        if config.init_from:
            initial = finetune.initial_model(model_config, finetune.read_source(config.init_from), config.seed)
        else:
            torch.manual_seed(config.seed)
            initial = CharRNN(model_config)
        trainer = make(initial, vocab, train_ids, val_ids, config)
        trainer.say(f"{run_dir} stopped before its first checkpoint: starting it again from step 0")
        return trainer
    model, saved = checkpoint.load(state_path, model_config, config)
    trainer = make(model, vocab, train_ids, val_ids, config)
    checkpoint.restore(trainer, saved, state_path)
    return trainer


def _check_same_text(
    run_dir: Path, config: TrainConfig, corpus_info: dict[str, Any], run_vocab: Vocab, data_dir
) -> None:
    """The text and the vocabulary the run started with, or a one-line error."""
    text = prepare_text(config, data_dir)
    if corpus_info.get("sha256") and text.sha256 != corpus_info["sha256"]:
        raise CharRNNError(
            f"the training text {config.text} changed since this run started; resume needs the same text"
        )
    # A fine-tuned run's vocabulary is its source's plus the text's new characters; a new run's is the text's.
    if run_vocab.unknown("".join(text.vocab.chars)) if config.init_from else run_vocab != text.vocab:
        raise CharRNNError(f"{run_dir}/vocab.json does not match the training text; restore the run's own vocab.json")
