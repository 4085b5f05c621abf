"""The recipe for a time budget: `charrnn train --text T --max-minutes M` with no model flags (or
`--preset auto`) plans the model, the schedule and the regularisation from the corpus, the budget and
this machine's measured speed. The rule is in docs/quality.md; this module is the rule alone (no
PyTorch), and `timing.py` measures what it needs.

1. Speed: each candidate shape's training step is timed at the run's batch (`timing.py`), in bf16 and
   in fp32 where both run, and the faster precision is kept: bf16 is 2-3x faster where AMX works and
   slower where it does not.
2. Size: the largest candidate that (a) sees at least CHARS_PER_PARAMETER characters per parameter in
   the budget, so it is trained enough, and (b) has at most PARAMETERS_PER_CHARACTER parameters per
   training character, so the text can support it once regularised.
3. Schedule: the steps that fit in the budget once validation (timed too) is paid for, recorded as
   max_steps and revised at each checkpoint from the speed the run has had (fit_budget); the learning
   rate follows a cosine over those steps, so it reaches its floor as the budget ends, and an average of the weights (EMA) over about the last AVERAGE_SPAN of them is
   what is validated and saved. Patience is off: the planned schedule, not an early stop, ends the run.
4. Regularisation grows with the pressure to memorise the text: the passes over it the budget allows
   times the parameters per training character. A small model's few passes need none; dozens of passes
   of a large model over a small text need strong dropout, weight drop and weight decay.
5. Mode: stateful training (carried state, truncated BPTT; how generation reads text) in one process,
   validated by the stateful protocol; the tutorial's shuffled chunks under several processes.

Every choice becomes a field of the run's config (so `--resume` continues the same plan: nothing is
recomputed), and what was measured is recorded beside it in config.json's "plan".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from charrnn.config import ModelConfig, TrainConfig
from charrnn.model.memory import parameter_count

RECIPE_VERSION = 1  # bumps when the rule changes, so a run says which rule planned it

# (layers, hidden, embedding), in increasing cost.
CANDIDATES = (
    (1, 128, 64),
    (1, 256, 64),
    (2, 256, 64),
    (2, 384, 128),
    (2, 512, 128),
    (2, 768, 128),
    (2, 1024, 256),
    (3, 1024, 256),
)
CHARS_PER_PARAMETER = 10.0
PARAMETERS_PER_CHARACTER = 3.0
BUDGET_USED = 0.94  # of the budget planned for steps and validation: the rest absorbs start-up and noise
# Regularisation (see regularisation()): none below this pressure, and each setting's strongest value.
PRESSURE_FREE = 12.0
STRONGEST = {"dropout": 0.4, "weight_drop": 0.3, "embedding_dropout": 0.1, "weight_decay": 0.1}
# Validation takes at most this share of the budget: beyond it, fewer characters are validated (down to
# LEAST_VALIDATED), as with the averaged weights and the schedule the best epoch is the last one anyway.
VALIDATION_SHARE = 0.04
LEAST_VALIDATED = 10_000
AVERAGE_SPAN = 0.05  # the EMA spans about this fraction of the planned steps
PLANNING_STEPS = 12  # steps timed for the chosen shape, whose step time sets the schedule
# A budget that holds fewer steps than FEW_STEPS at the run's batch trains at SMALL_BATCH rows instead:
# measured on a 1-minute budget, twice the updates of half the size learn more (bench/sweep.py).
FEW_STEPS = 1_000
SMALL_BATCH = 32
# Peak learning rate by hidden size: small networks take larger steps (bench/sweep.py, docs/quality.md).
LEARNING_RATES = ((256, 4e-3), (512, 3e-3), (1 << 30, 2e-3))
CLIP = 1.0
SHAPE_FIELDS = ("num_layers", "hidden_size", "embedding_size")


class Machine(Protocol):
    """What the plan measures on this machine (timing.Timer; a model of a machine in tests)."""

    def precision(self) -> tuple[str, dict[str, float]]:
        """The faster precision for training here, and the seconds per step of each one tried."""
        ...

    def step(self, shape: tuple[int, int, int], precision: str, steps: int = 3, batch: int = 0) -> float:
        """Seconds per training step of `shape` at `batch` rows (0: the run's batch), the mean of `steps`
        after a warm-up."""
        ...

    def validation(self, shape: tuple[int, int, int], precision: str, stateful: bool, chars: int) -> float:
        """Seconds for one validation of `shape` by the run's criterion on `chars` characters."""
        ...


@dataclass(frozen=True)
class Plan:
    """The settings the plan chose (those the user gave left out) and config.json's record of why."""

    model: dict[str, Any]  # ModelConfig fields
    train: dict[str, Any]  # TrainConfig fields
    record: dict[str, Any]  # measurements and reasons


def summary(model: ModelConfig, train: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    """One paragraph saying what the plan chose and why (the run's final settings, flags included)."""
    mode = "stateful" if train["stateful"] else "chunks"
    return (
        f"planned for {record['budget_minutes']:g} minutes: {model.num_layers} x {model.cell.upper()} "
        f"{model.hidden_size} (embedding {model.embedding_size}, {parameter_count(model):,} parameters), size "
        f"set by {record['size_reason']}; {train['precision']} at {1000 * record['step_seconds']:.0f} ms/step "
        f"(batch {train['batch_size']} x {train['seq_len']}, {mode}): {train['max_steps']:,} steps = "
        f"{record['epochs']:.1f} passes over {record['train_chars']:,} characters, lr {train['lr']:g} cosine; "
        f"dropout {model.dropout}, weight drop {model.weight_drop}, embedding dropout {model.embedding_dropout}, "
        f"weight decay {train['weight_decay']}, EMA {train['ema']} (rule: docs/quality.md; flags override any choice)"
    )


def regularisation(epochs: float, parameters_per_char: float) -> dict[str, float]:
    """Regularisation against the run's pressure to memorise its text: the passes over it times the
    parameters per training character. None up to PRESSURE_FREE, rising with the pressure's logarithm
    to its strongest at 32 times that."""
    pressure = epochs * parameters_per_char
    strength = min(1.0, max(0.0, math.log2(max(pressure, 1e-9) / PRESSURE_FREE) / 5.0))
    return {name: round(strongest * strength, 2) for name, strongest in STRONGEST.items()}


def average_decay(steps: int) -> float:
    """An EMA decay whose span (1 / (1 - decay)) is about AVERAGE_SPAN of the planned steps."""
    span = max(10.0, AVERAGE_SPAN * steps)
    return round(min(0.9995, max(0.9, 1.0 - 1.0 / span)), 5)


def steps_for(seconds: float, batch_chars: int, step: float, validation: float, train_chars: int) -> int:
    """Steps that fit in `seconds` when each takes `step` and every epoch ends with a validation."""
    steps_per_epoch = max(1, (train_chars - 1) // batch_chars)
    per_step = step + validation / steps_per_epoch
    # One validation more than whole epochs: the last, partial epoch is validated too.
    return max(1, int((BUDGET_USED * seconds - validation) / per_step))


def choose_shape(
    vocab_size: int, train_chars: int, seconds: float, batch_chars: int, step: Callable[[tuple], float], shapes
) -> tuple[tuple[int, int, int], str]:
    """The largest shape within both bounds (the smallest when none is), and the bound that stopped it.
    A shape is timed only when the corpus bound lets it through, and none after the first that fails."""
    chosen, reason = None, "the largest candidate"
    for shape in shapes:
        params = parameter_count(ModelConfig(vocab_size=vocab_size, **dict(zip(SHAPE_FIELDS, shape))))
        if chosen is not None and params > PARAMETERS_PER_CHARACTER * train_chars:
            reason = (
                f"the corpus ({shape_name(shape)} would have over {PARAMETERS_PER_CHARACTER:g} parameters "
                "per training character)"
            )
            break
        seen = seconds / step(shape) * batch_chars
        if chosen is not None and seen < CHARS_PER_PARAMETER * params:
            reason = (
                f"the budget ({shape_name(shape)} would see {seen / params:.1f} characters per parameter, "
                f"< {CHARS_PER_PARAMETER:g})"
            )
            break
        chosen = shape
    assert chosen is not None
    return chosen, reason


def shape_name(shape: tuple[int, int, int]) -> str:
    return f"{shape[0]} x {shape[1]}"


@dataclass(frozen=True)
class Schedule:
    batch_size: int
    step_seconds: float  # a training step at batch_size
    validated: int  # characters each validation scores (eval_chars)
    validation_seconds: float
    steps: int

    def epochs(self, seq_len: int, train_chars: int) -> float:
        return self.steps * self.batch_size * seq_len / max(1, train_chars)


def schedule(
    machine: Machine,
    shape: tuple[int, int, int],
    precision: str,
    stateful: bool,
    *,
    seconds: float,
    train_chars: int,
    val_chars: int,
    batch_size: int,
    seq_len: int,
    given_train: Mapping[str, Any],
    processes: int,
) -> Schedule:
    """The batch, the validation and the steps of the budget for `shape`."""
    # The schedule rests on this step time: timed again over more steps, as a few vary by 10-20%.
    step = machine.step(shape, precision, steps=PLANNING_STEPS)
    few = steps_for(seconds, batch_size * seq_len, step, 0.0, train_chars) < FEW_STEPS
    if few and batch_size > SMALL_BATCH and processes == 1 and "batch_size" not in given_train:
        batch_size = SMALL_BATCH
        step = machine.step(shape, precision, steps=PLANNING_STEPS, batch=SMALL_BATCH)
    batch_chars = batch_size * seq_len
    validated = min(val_chars, given_train.get("eval_chars", TrainConfig.eval_chars) or val_chars)
    validation = machine.validation(shape, precision, stateful, validated) if validated >= 2 else 0.0
    # At most this many validations: one per epoch of the steps that would fit with free validation.
    validations = steps_for(seconds, batch_chars, step, 0.0, train_chars) * batch_chars / max(1, train_chars) + 1
    if validations * validation > VALIDATION_SHARE * seconds and "eval_chars" not in given_train:
        share = VALIDATION_SHARE * seconds / (validations * validation)
        validated = max(min(validated, LEAST_VALIDATED), int(validated * share))
        validation = machine.validation(shape, precision, stateful, validated)
    steps = steps_for(seconds, batch_chars, step, validation, train_chars)
    return Schedule(batch_size, step, validated, validation, given_train.get("max_steps") or steps)


def plan(
    machine: Machine,
    *,
    vocab_size: int,
    train_chars: int,
    val_chars: int,
    minutes: float,
    batch_size: int,
    seq_len: int,
    given_model: Mapping[str, Any] | None = None,
    given_train: Mapping[str, Any] | None = None,
    processes: int = 1,
) -> Plan:
    """The recipe for `minutes` of training on `train_chars` characters, measured on `machine`.
    `given_*`: the settings the user fixed (flags, --config), which the plan keeps and plans around."""
    given_model, given_train = dict(given_model or {}), dict(given_train or {})
    seconds = 60.0 * minutes
    shapes = [s for s in CANDIDATES if all(given_model.get(k, v) == v for k, v in zip(SHAPE_FIELDS, s))]
    if not shapes:  # a shape outside the candidates: the user's, the middle candidate's filling the rest
        middle = dict(zip(SHAPE_FIELDS, CANDIDATES[len(CANDIDATES) // 2]))
        shapes = [tuple(given_model.get(k, middle[k]) for k in SHAPE_FIELDS)]
    precision, tried = given_train.get("precision", "auto"), {}
    if precision == "auto":
        precision, tried = machine.precision()
    timed: dict[tuple[int, int, int], float] = {}

    def step(shape: tuple[int, int, int]) -> float:
        if shape not in timed:
            timed[shape] = machine.step(shape, precision)
        return timed[shape]

    shape, reason = choose_shape(vocab_size, train_chars, seconds, batch_size * seq_len, step, shapes)
    stateful = processes == 1 and given_train.get("stateful", True)
    sizes = dict(seconds=seconds, train_chars=train_chars, val_chars=val_chars, batch_size=batch_size)
    chosen = schedule(
        machine, shape, precision, stateful, **sizes, seq_len=seq_len, given_train=given_train, processes=processes
    )
    epochs = chosen.epochs(seq_len, train_chars)
    parameters = parameter_count(ModelConfig(vocab_size=vocab_size, **dict(zip(SHAPE_FIELDS, shape))))
    regular = regularisation(epochs, parameters / max(1, train_chars))
    model = {**dict(zip(SHAPE_FIELDS, shape)), **{k: v for k, v in regular.items() if k != "weight_decay"}}
    train = {
        "batch_size": chosen.batch_size,
        "precision": precision,
        "stateful": stateful,
        "val_protocol": "stateful" if stateful else "chunks",
        "lr": next(lr for hidden, lr in LEARNING_RATES if shape[1] <= hidden),
        "lr_schedule": "cosine",
        "clip": CLIP,
        "weight_decay": regular["weight_decay"],
        "ema": average_decay(chosen.steps),
        "max_steps": chosen.steps,
        "epochs": math.ceil(epochs) + 2,  # never the limit: max_steps ends the plan
        "patience": 0,
        "fit_budget": True,
        "eval_chars": chosen.validated,
    }
    record = {
        "recipe_version": RECIPE_VERSION,
        "budget_minutes": minutes,
        "train_chars": train_chars,
        "step_seconds": round(chosen.step_seconds, 5),
        "validation_seconds": round(chosen.validation_seconds, 3),
        "validated_chars": chosen.validated,
        "planned_steps": chosen.steps,
        "epochs": round(epochs, 2),
        "pressure": round(epochs * parameters / max(1, train_chars), 2),
        "size_reason": reason,
        "ms_per_step": {shape_name(s): round(1000 * t, 1) for s, t in timed.items()},
        "precision_ms_per_step": {p: round(1000 * t, 1) for p, t in tried.items()},
        "given": sorted([*given_model, *given_train]),
    }
    return Plan(
        {k: v for k, v in model.items() if k not in given_model},
        {k: v for k, v in train.items() if k not in given_train},
        record,
    )
