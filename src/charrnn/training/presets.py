"""Named recipes: `charrnn train --preset NAME`. A preset is {"model": {...}, "train": {...}} like a
--config file; --config and flags override it. Each one's figures come from bench/quality.py."""

from __future__ import annotations

from typing import Any

from charrnn.errors import CharRNNError

# Not a fixed recipe: the plan for --max-minutes on this machine (recipe.py), made when the run starts.
AUTO = "auto"

PRESETS: dict[str, dict[str, Any]] = {
    # The tutorial exactly: embedding 256, GRU 1024, batch 64 x 100, Adam 1e-3, no validation split.
    "tutorial": {"model": {}, "train": {"val_fraction": 0.0, "epochs": 20}},
    # The best validation loss on Shakespeare we measured within 30 minutes on a 2-core CPU
    # (bench/quality.py, docs/benchmarks.md): 1.476 nats/char, reached after ~10 minutes. Two
    # smaller GRU layers with dropout generalise better than the tutorial's one large layer (1.501);
    # patience stops the run once validation has stopped improving (best.safetensors keeps the best).
    "shakespeare-30min": {
        "model": {"num_layers": 2, "hidden_size": 512, "embedding_size": 128, "dropout": 0.25},
        "train": {"lr": 2e-3, "lr_schedule": "cosine", "epochs": 40, "max_minutes": 30.0, "clip": 1.0, "patience": 5},
    },
    # docs/quality.md: the same network with AWD-LSTM's regularisation -- weight drop on the
    # recurrent weights, embedding dropout, AdamW weight decay on the matrices, an EMA of the weights for
    # validation and the saved weights -- and truncated BPTT over 64 contiguous streams, judged by the
    # stateful protocol (how generation reads text). Measured (bench/quality.py, 30 minutes on a 2-core
    # Xeon without AMX): stateful 1.4750, windows 1.4887, chunks 1.5196 nats/char, still
    # improving and under-fitted (train 1.53 > validation): in 30 minutes of this CPU (12 epochs) the
    # regularisation costs more than it saves. Epochs are planned for the cosine schedule to end with
    # the 30 minutes there (~2 min per epoch); on a faster machine the run ends early at epoch 14.
    "shakespeare-30min-stateful": {
        "model": {
            "num_layers": 2,
            "hidden_size": 512,
            "embedding_size": 128,
            "dropout": 0.25,
            "weight_drop": 0.3,
            "embedding_dropout": 0.1,
        },
        "train": {
            "stateful": True,
            "lr": 2e-3,
            "lr_schedule": "cosine",
            "epochs": 14,
            "max_minutes": 30.0,
            "clip": 1.0,
            "weight_decay": 0.1,
            "ema": 0.999,
            "val_protocol": "stateful",
            "patience": 5,
        },
    },
}


def preset(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model settings, train settings) of a named preset; `auto` has none until it is planned."""
    if name == AUTO:
        return {}, {}
    if name not in PRESETS:
        raise CharRNNError(f"unknown preset {name!r}; choose one of {', '.join(NAMES)}")
    return dict(PRESETS[name]["model"]), dict(PRESETS[name]["train"])


NAMES = (AUTO, *sorted(PRESETS))
