"""Fine-tuning against training from scratch: does a Shakespeare model learn a new style faster?

    OMP_NUM_THREADS=1 python bench/finetune.py                  # a few minutes on a 2-core machine
    python bench/finetune.py --base-steps 400 --steps 200 --eval-every 20

1. Trains a small Shakespeare model (GRU 256, embedding 64) for --base-steps steps.
2. Builds a small text of another style: ten software licences from /usr/share/common-licenses,
   joined (about 210 KB; the last 10% held out).
3. From the same seed and for the same --steps steps, trains on the licences (a) from scratch and (b)
   fine-tuned from the Shakespeare model (`charrnn train --init-from`), scoring the held-out licence
   text every --eval-every steps.
Prints both validation curves and writes docs/finetune.png. Runs go in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from charrnn import Callback, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
LICENCES = ["Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.3", "GPL-2", "GPL-3", "LGPL-2.1", "MPL-1.1", "MPL-2.0"]
MODEL = dict(embedding_size=64, hidden_size=256)


class Curve(Callback):
    """Validation loss at step 0 and every `every` steps."""

    def __init__(self, every: int):
        self.every, self.points = every, []

    def on_step(self, trainer: Trainer, loss: float) -> None:
        if trainer.global_step % self.every == 0:
            self.points.append((trainer.global_step, trainer.evaluate()))


def run(run_dir: Path, config: TrainConfig, model: dict, every: int) -> list[tuple[int, float]]:
    curve = Curve(every)
    trainer = Trainer.create(run_dir, config, model, callbacks=[curve], out=open(os.devnull, "w"))
    start = trainer.evaluate()
    trainer.fit()
    return [(0, start)] + curve.points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-steps", type=int, default=400, help="Shakespeare training steps (default 400)")
    parser.add_argument("--steps", type=int, default=200, help="steps on the licences, each way (default 200)")
    parser.add_argument("--eval-every", type=int, default=20)
    shared = ROOT.parent / "shared" / "data"
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("CHARRNN_DATA_DIR") or (str(shared) if shared.is_dir() else None),
        help="folder holding shakespeare.txt (default $CHARRNN_DATA_DIR, else ../shared/data, else downloaded)",
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "finetune.png")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="charrnn-finetune-"))
    licences = work / "licences.txt"
    licences.write_text(
        "\n".join(Path("/usr/share/common-licenses", n).read_text(encoding="utf-8") for n in LICENCES), encoding="utf-8"
    )
    common = dict(batch_size=64, seq_len=100, seed=1, tensorboard="off", checkpoint_every=0, log_every=10)
    base = work / "shakespeare"
    print(f"1/3 Shakespeare, {args.base_steps} steps -> {base}", file=sys.stderr)
    Trainer.create(
        base,
        TrainConfig(text="shakespeare", max_steps=args.base_steps, epochs=100, **common),
        MODEL,
        data_dir=args.data_dir,
        out=open(os.devnull, "w"),
    ).fit()
    target = TrainConfig(text=str(licences), max_steps=args.steps, epochs=1000, **common)
    print(f"2/3 licences from scratch, {args.steps} steps", file=sys.stderr)
    scratch = run(work / "scratch", target, MODEL, args.eval_every)
    print(f"3/3 licences fine-tuned from Shakespeare, {args.steps} steps", file=sys.stderr)
    tuned = run(work / "tuned", TrainConfig(**{**vars_of(target), "init_from": str(base)}), {}, args.eval_every)
    print(f"validation loss (nats/char) on the held-out licence text; runs in {work}")
    print(f"{'step':>6} {'scratch':>9} {'fine-tuned':>11}")
    for (step, a), (_, b) in zip(scratch, tuned):
        print(f"{step:>6} {a:>9.4f} {b:>11.4f}")
    plot(scratch, tuned, args)
    print(f"plot: {args.plot}")
    print("command: OMP_NUM_THREADS=1 python bench/finetune.py " + " ".join(sys.argv[1:]))
    return 0


def vars_of(config: TrainConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(config)


def plot(scratch, tuned, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(*zip(*scratch), marker="o", ms=3, label="from scratch")
    ax.plot(*zip(*tuned), marker="o", ms=3, label=f"fine-tuned from Shakespeare ({args.base_steps} steps)")
    ax.set_xlabel("steps on the licences (batch 64 x 100)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("GRU 256 on ten software licences")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot)


if __name__ == "__main__":
    sys.exit(main())
