"""The optimizer (Adam, or AdamW with decoupled weight decay) and the weight average (EMA) of a run.

Weight decay goes on the weight matrices only (embedding excluded): decaying biases pulls gates
towards 0.5 for no generalisation benefit, and decaying the embedding shrinks the rows of rare
characters, which get few gradient updates to push back (AWD-LSTM and nanoGPT both exempt biases;
nanoGPT also exempts its embeddings' norms/biases, we exempt the whole embedding). With weight_decay 0
the optimizer is plain Adam with one parameter group: the tutorial's, and the state layout that every run
without weight decay has saved.

The learning rate follows `learning_rate`: constant, or a cosine from lr down to lr / 10.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from charrnn.config import TrainConfig


def _groups(model: nn.Module, config: TrainConfig) -> list[list[str]]:
    """Parameter names per optimizer group: one group without weight decay, else (decayed, not decayed)."""
    names = [name for name, _ in model.named_parameters()]
    if config.weight_decay == 0:
        return [names]
    decayed = [n for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith("embedding.")]
    return [decayed, [n for n in names if n not in decayed]]


def parameter_order(model: nn.Module, config: TrainConfig) -> list[str]:
    """Parameter names in the order the optimizer's state numbers them."""
    return [name for group in _groups(model, config) for name in group]


def optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.weight_decay == 0:
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    parameters = dict(model.named_parameters())
    decayed, kept = _groups(model, config)
    return torch.optim.AdamW(
        [
            {"params": [parameters[n] for n in decayed], "weight_decay": config.weight_decay},
            {"params": [parameters[n] for n in kept], "weight_decay": 0.0},
        ],
        lr=config.lr,
    )


def learning_rate(config: TrainConfig, step: int, planned_steps: int) -> float:
    """The learning rate for the step after `step` of `planned_steps` under config.lr_schedule."""
    if config.lr_schedule == "constant":
        return config.lr
    progress = min(1.0, step / max(1, planned_steps))
    low = config.lr / 10
    return low + 0.5 * (config.lr - low) * (1 + math.cos(math.pi * progress))


class WeightAverage:
    """An exponential moving average of a model's weights, kept in a copy of the model (`module`), which is
    what validation scores and the weight files hold.

    Hand-rolled rather than torch.optim.swa_utils.AveragedModel: its state must be plain tensors in
    trainer_state.pt (read with weights_only=True) for exact resume, and the copy must be a CharRNN so
    that save_weights/evaluate take it as they take the model. The decay warms up as
    min(decay, (1 + t) / (10 + t)) at update t (TensorFlow's ExponentialMovingAverage with num_updates),
    so the early average is not dominated by the random initial weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.module.eval()
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, current in zip(self.module.parameters(), model.parameters()):
            average.lerp_(current.detach(), 1.0 - decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {
            "updates": torch.tensor(self.updates),
            "weights": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
