"""The loss plot: training loss (per logged step) and validation loss (per epoch) against steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from charrnn.storage.files import atomic_path


def plot_losses(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    steps = [(r["step"], r["loss"]) for r in records if r.get("kind") == "step"]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "epoch" and r.get("val_loss") is not None]
    train = [(r["step"], r["train_loss"]) for r in records if r.get("kind") == "epoch"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if steps:
        ax.plot(*zip(*steps), label="train (logged steps)", color="tab:blue", alpha=0.5, linewidth=1)
    if train:
        ax.plot(*zip(*train), "o-", label="train (epoch mean)", color="tab:blue")
    if val:
        ax.plot(*zip(*val), "s-", label="validation", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
