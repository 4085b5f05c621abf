"""Planning a run for a time budget on this machine: `plan_run` prepares the text, measures what the
recipe (recipe.py) needs -- a training step per shape and precision, one validation -- and returns the
settings. Every measurement uses its own random numbers, so the run's seeded ones stay untouched."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.config import ModelConfig, TrainConfig, from_dict
from charrnn.errors import CharRNNError
from charrnn.model.network import CharRNN
from charrnn.model.precision import DTYPES, bf16_native, resolve_device
from charrnn.model.scoring import Protocols, evaluate
from charrnn.training import distributed, recipe
from charrnn.training.optimizer import WeightAverage
from charrnn.training.recipe import SHAPE_FIELDS

REFERENCE = (2, 512, 128)  # the shape whose step decides the precision when none is given
VALIDATION_SAMPLE = 32_000  # characters validated to time a validation; the rest is scaled


class Timer:
    """recipe.Machine on this machine, at `config`'s batch, device and cell."""

    def __init__(self, config: TrainConfig, vocab_size: int, cell: str = "gru", shape=REFERENCE):
        self.config = config
        self.vocab_size = vocab_size
        self.cell = cell
        self.reference = shape
        self.device = resolve_device(config.device)
        self.generator = torch.Generator().manual_seed(0)

    def _model(self, shape: tuple[int, int, int], precision: str) -> CharRNN:
        fields = dict(zip(SHAPE_FIELDS, shape))
        model = CharRNN(ModelConfig(vocab_size=self.vocab_size, cell=self.cell, **fields)).to(self.device)
        model.compute_dtype = DTYPES[precision]
        return model

    def step(self, shape: tuple[int, int, int], precision: str, steps: int = 3, batch: int = 0) -> float:
        """One warm-up step, then the mean of `steps`, at `batch` rows (0: the run's batch)."""
        model = self._model(shape, precision)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        average = WeightAverage(model, 0.99)
        ids = torch.randint(
            self.vocab_size, (batch or self.config.batch_size, self.config.seq_len + 1), generator=self.generator
        ).to(self.device)
        times = []
        for _ in range(steps + 1):
            started = time.perf_counter()
            logits, _ = model(ids[:, :-1])  # (batch, time, vocab)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.CLIP)  # as the recipe's steps do
            optimizer.step()
            average.update(model)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        return float(np.mean(times[1:]))

    def precision(self) -> tuple[str, dict[str, float]]:
        """fp32, or bf16 where this machine has bf16 products and they train the reference shape faster."""
        if not bf16_native(self.device):
            return "fp32", {}
        tried = {p: self.step(self.reference, p) for p in ("bf16", "fp32")}
        return min(tried, key=tried.get), tried

    def validation(self, shape: tuple[int, int, int], precision: str, stateful: bool, chars: int) -> float:
        """One validation of `chars` characters, timed on a sample and scaled: the stateful protocol's
        cost grows with the characters plus each piece's warm-up."""
        sample = min(chars, VALIDATION_SAMPLE)
        ids = np.random.default_rng(0).integers(self.vocab_size, size=sample)
        settings = Protocols(seq_len=self.config.seq_len, batch_size=self.config.batch_size)
        model = self._model(shape, precision).eval()
        started = time.perf_counter()
        with torch.inference_mode():
            evaluate(model, ids, "stateful" if stateful else "chunks", settings)
        seconds = time.perf_counter() - started
        if not stateful:
            return seconds * chars / sample
        overhead = (settings.streams - 1) * settings.warmup
        return seconds * (chars + overhead) / (sample + overhead)


def plan_run(
    config: TrainConfig,
    given_model: dict[str, Any],
    given_train: dict[str, Any],
    data_dir=None,
    say: Callable[[str], None] = print,
) -> tuple[TrainConfig, dict[str, Any], dict[str, Any]]:
    """(training config, model fields, config.json's plan record) for `config`'s text and max_minutes,
    keeping every setting in `given_*`. Under several processes rank 0 measures and all take its plan."""
    if not config.max_minutes > 0:
        raise CharRNNError("--preset auto plans for a time budget; add --max-minutes M")
    if config.init_from:
        raise CharRNNError("a fine-tuned run keeps its source's model; drop --preset auto, or --init-from")
    distributed.setup(resolve_device(config.device))
    planned = distributed.from_main(
        _plan(config, given_model, given_train, data_dir) if distributed.is_main() else None
    )
    train = dataclasses.replace(config, **planned.train)
    model = {**planned.model, **given_model}
    model_config = from_dict(ModelConfig, {"vocab_size": planned.record["vocab_size"], **model}, "model settings")
    if distributed.is_main():
        say(recipe.summary(model_config, dataclasses.asdict(train), planned.record))
    return train, model, planned.record


def _plan(config: TrainConfig, given_model: dict[str, Any], given_train: dict[str, Any], data_dir) -> recipe.Plan:
    from charrnn.data.batches import split
    from charrnn.training.runs import prepare_text

    corpus = prepare_text(config, data_dir)
    train_ids, val_ids = split(corpus.ids, config.val_fraction)
    processes = distributed.world_size()
    rows = dataclasses.replace(config, batch_size=max(1, config.batch_size // processes))  # each rank's share
    timer = Timer(rows, len(corpus.vocab), cell=given_model.get("cell", "gru"))
    planned = recipe.plan(
        timer,
        vocab_size=len(corpus.vocab),
        train_chars=len(train_ids),
        val_chars=len(val_ids),
        minutes=config.max_minutes,
        batch_size=config.batch_size,
        seq_len=config.seq_len,
        given_model=given_model,
        given_train=given_train,
        processes=processes,
    )
    return dataclasses.replace(planned, record={**planned.record, "vocab_size": len(corpus.vocab)})
