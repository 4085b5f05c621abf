"""Named recipes: `charrnn train --preset NAME`. A preset is {"model": {...}, "train": {...}} like a
--config file; --config and flags override it. Each one's figures come from bench/quality.py."""

from __future__ import annotations

from typing import Any

from .errors import CharRNNError

PRESETS: dict[str, dict[str, Any]] = {
    # The tutorial exactly: embedding 256, GRU 1024, batch 64 x 100, Adam 1e-3, no validation split.
    "tutorial": {"model": {}, "train": {"val_fraction": 0.0, "epochs": 20}},
    # Best validation loss on Shakespeare within 30 minutes on a 2-core CPU (bench/quality.py): two
    # smaller GRU layers with dropout generalise better than one large one, and the cosine schedule
    # spends the last third of the budget at a low learning rate.
    "shakespeare-30min": {
        "model": {"num_layers": 2, "hidden_size": 512, "embedding_size": 128, "dropout": 0.25},
        "train": {"lr": 2e-3, "lr_schedule": "cosine", "epochs": 40, "max_minutes": 30.0, "clip": 1.0},
    },
}


def preset(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model settings, train settings) of a named preset."""
    if name not in PRESETS:
        raise CharRNNError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name]["model"]), dict(PRESETS[name]["train"])
