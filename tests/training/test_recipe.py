"""The recipe for a time budget (`--preset auto`): the rule on modelled machines, and the plan recorded in
a run, kept on resume and taken by every process."""

from __future__ import annotations

import json

import pytest
from tests.conftest import run_cli

from charrnn.config import ModelConfig
from charrnn.model.memory import parameter_count
from charrnn.training import recipe

SHAKESPEARE_TRAIN = 1_003_855


class Modelled:
    """A machine whose training step costs `overhead` plus `per_parameter` seconds per parameter."""

    def __init__(self, per_parameter: float, overhead: float = 0.005, fp32_faster: bool = False):
        self.per_parameter, self.overhead, self.fp32_faster = per_parameter, overhead, fp32_faster
        self.timed: list[tuple] = []

    def precision(self):
        tried = {"bf16": 0.2, "fp32": 0.1 if self.fp32_faster else 0.5}
        return min(tried, key=tried.get), tried

    def step(self, shape, precision, steps=3, batch=0):
        self.timed.append(shape)
        fields = dict(zip(recipe.SHAPE_FIELDS, shape))
        return self.overhead + self.per_parameter * parameter_count(ModelConfig(vocab_size=65, **fields))

    def validation(self, shape, precision, stateful, chars):
        return 0.5 * chars / 111_540


FAST, SLOW = 0.03e-6, 0.15e-6  # seconds per parameter: AMX working, and five times slower


def planned(machine=None, chars=SHAKESPEARE_TRAIN, minutes=30.0, **given) -> recipe.Plan:
    model = {k: given.pop(k) for k in list(given) if k in ModelConfig.__dataclass_fields__}
    return recipe.plan(
        machine or Modelled(FAST),
        vocab_size=65,
        train_chars=chars,
        val_chars=111_540,
        minutes=minutes,
        batch_size=64,
        seq_len=100,
        given_model=model,
        given_train=given,
    )


def size(plan: recipe.Plan) -> int:
    fields = {k: plan.model[k] for k in recipe.SHAPE_FIELDS}
    return parameter_count(ModelConfig(vocab_size=65, **fields))


def test_bigger_budgets_corpora_and_machines_never_get_smaller_models():
    budgets = [size(planned(minutes=m)) for m in (1, 3, 10, 30, 600)]
    assert budgets == sorted(budgets) and budgets[0] < budgets[-1]
    corpora = [size(planned(chars=c, minutes=600)) for c in (50_000, 1_000_000, 100_000_000)]
    assert corpora == sorted(corpora) and corpora[0] < corpora[-1]
    assert size(planned(Modelled(SLOW))) <= size(planned(Modelled(FAST)))
    assert size(planned(chars=1_000_000, minutes=600)) <= recipe.PARAMETERS_PER_CHARACTER * 1_000_000


def test_a_fast_machine_gets_a_bigger_more_regularised_model_than_a_slow_one():
    fast, slow = planned(Modelled(FAST), minutes=10), planned(Modelled(SLOW), minutes=10)
    assert size(fast) > size(slow)
    assert fast.model["dropout"] > slow.model["dropout"] and fast.train["weight_decay"] >= slow.train["weight_decay"]
    assert fast.record["pressure"] > slow.record["pressure"]


def test_regularisation_grows_with_the_pressure_to_memorise():
    assert recipe.regularisation(1.0, 0.3) == dict.fromkeys(recipe.STRONGEST, 0.0)  # one pass of a small model
    assert recipe.regularisation(200.0, 3.0) == recipe.STRONGEST  # two hundred passes of a large one
    values = [recipe.regularisation(e, 2.6)["dropout"] for e in (1, 4, 16, 64)]
    assert values == sorted(values) and values[0] < values[-1]


@pytest.mark.parametrize("minutes", [1, 3, 10, 30])
def test_the_schedule_ends_with_the_budget(minutes):
    machine = Modelled(FAST)
    plan = planned(machine, minutes=minutes)
    step = machine.step(tuple(plan.model[k] for k in recipe.SHAPE_FIELDS), "bf16")
    epochs = plan.train["max_steps"] * 6400 / SHAKESPEARE_TRAIN
    validation = plan.record["validation_seconds"]
    spent = plan.train["max_steps"] * step + (int(epochs) + 1) * validation  # steps, a validation per epoch
    assert recipe.BUDGET_USED * 60 * minutes * 0.98 <= spent <= recipe.BUDGET_USED * 60 * minutes * 1.001
    assert plan.train["lr_schedule"] == "cosine" and plan.train["patience"] == 0
    assert plan.train["epochs"] * (SHAKESPEARE_TRAIN // 6400) > plan.train["max_steps"]  # max_steps ends it
    span = 1 / (1 - plan.train["ema"])
    assert span <= 1.02 * max(10.0, 0.05 * plan.train["max_steps"])


def test_validation_takes_a_bounded_share_of_the_budget():
    slow_validation = Modelled(FAST)
    slow_validation.validation = lambda shape, precision, stateful, chars: 5.0 * chars / 111_540
    plan = planned(slow_validation, minutes=30)
    validations = plan.record["epochs"] + 1
    assert recipe.LEAST_VALIDATED < plan.train["eval_chars"] < 111_540
    assert validations * plan.record["validation_seconds"] <= 1.05 * recipe.VALIDATION_SHARE * 30 * 60
    slow_validation.validation = lambda shape, precision, stateful, chars: 50.0 * chars / 111_540
    assert planned(slow_validation, minutes=30).train["eval_chars"] == recipe.LEAST_VALIDATED  # the floor
    assert planned(slow_validation, minutes=30, eval_chars=50_000).train.get("eval_chars") is None  # given: kept


def test_given_settings_are_kept_and_planned_around():
    plan = planned(hidden_size=640, num_layers=2, dropout=0.05, lr=1e-3, stateful=False)
    assert "hidden_size" not in plan.model and "dropout" not in plan.model and "lr" not in plan.train
    assert plan.model["embedding_size"] == 128 and plan.model["weight_drop"] > 0  # the rest is planned
    assert plan.train["val_protocol"] == "chunks"  # not stateful: scored like its training
    assert sorted(plan.record["given"]) == ["dropout", "hidden_size", "lr", "num_layers", "stateful"]
    # A candidate's shape: only it is timed.
    machine = Modelled(FAST)
    planned(machine, hidden_size=256, num_layers=1)
    assert set(machine.timed) == {(1, 256, 64)}


def test_the_faster_precision_is_chosen_and_a_given_one_kept():
    assert planned(Modelled(FAST)).train["precision"] == "bf16"
    assert planned(Modelled(FAST, fp32_faster=True)).train["precision"] == "fp32"
    plan = planned(Modelled(FAST), precision="bf16")
    assert "precision" not in plan.train and plan.record["precision_ms_per_step"] == {}


def test_the_corpus_bound_needs_no_timing():
    machine = Modelled(FAST)
    plan = planned(machine, chars=20_000, minutes=600)
    assert plan.record["size_reason"].startswith("the corpus")
    assert set(machine.timed) == {recipe.CANDIDATES[0]}  # the next is refused before it is timed


# -- the plan in a run ----------------------------------------------------------------------------------
SMALL = ("--batch-size", "8", "--seq-len", "32")


def test_a_budget_without_model_flags_plans_records_and_resumes_the_plan(small_text, tmp_path):
    run = tmp_path / "run"
    done = run_cli("train", "--text", small_text, "--run", run, "--max-minutes", "0.05", *SMALL)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("planned for 0.05 minutes") == 1
    config = json.loads((run / "config.json").read_text())
    plan, train, model = config["plan"], config["train"], config["model"]
    assert config["format_version"] == 3 and plan["recipe_version"] == recipe.RECIPE_VERSION
    assert plan["given"] == ["batch_size", "max_minutes", "seq_len", "text"]
    assert train["stateful"] and train["val_protocol"] == "stateful" and train["lr_schedule"] == "cosine"
    assert train["max_steps"] > 0 and train["precision"] in ("bf16", "fp32")
    assert f"{model['num_layers']} x {model['hidden_size']}" in plan["ms_per_step"]
    generated = run_cli("generate", run, "--prompt", "a", "--length", "20", "--seed", "1")
    assert generated.returncode == 0 and len(generated.stdout) >= 20, generated.stderr  # a run like any other
    # Resuming reads the recorded plan: nothing is measured or chosen again.
    done = run_cli("train", "--resume", run, "--max-minutes", "0.1")
    assert done.returncode == 0, done.stderr
    assert "planned for" not in done.stderr
    again = json.loads((run / "config.json").read_text())
    assert again["plan"] == plan and again["model"] == model
    budget = ("max_minutes", "max_steps", "epochs")  # fit_budget may move the schedule's end, only it
    assert {k: v for k, v in again["train"].items() if k not in budget} == {
        k: v for k, v in train.items() if k not in budget
    }


def test_preset_auto_explains_what_it_needs(small_text, tmp_path):
    done = run_cli("train", "--text", small_text, "--run", tmp_path / "a", "--preset", "auto")
    assert done.returncode == 2 or done.returncode == 1
    assert "--preset auto plans for a time budget; add --max-minutes M" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "a").exists()


def test_model_flags_keep_a_budget_run_unplanned(small_text, tmp_path):
    run = tmp_path / "run"
    done = run_cli("train", "--text", small_text, "--run", run, "--max-minutes", "0.02", "--hidden", "16", *SMALL)
    assert done.returncode == 0, done.stderr
    config = json.loads((run / "config.json").read_text())
    assert "plan" not in config and config["train"]["lr_schedule"] == "constant"


def test_two_processes_take_rank_0s_plan(small_text, tmp_path):
    run = tmp_path / "run"
    done = run_cli(
        "train", "--nproc", "2", "--text", small_text, "--run", run, "--max-minutes", "0.05", *SMALL,
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("planned for") == 1  # rank 0 speaks
    train = json.loads((run / "config.json").read_text())["train"]
    assert not train["stateful"] and train["val_protocol"] == "chunks"  # one process only carries state


def test_a_budget_of_few_steps_halves_the_batch_unless_one_is_given():
    slow = Modelled(1e-6)  # a step of the smallest candidate takes ~0.1 s: ~600 steps in a minute
    assert planned(slow, minutes=1).train["batch_size"] == recipe.SMALL_BATCH
    assert "batch_size" not in planned(slow, minutes=1, batch_size=64).train
    assert planned(Modelled(FAST), minutes=30).train["batch_size"] == 64
