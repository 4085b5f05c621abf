"""Learning speed: train on Shakespeare for a fixed wall-clock budget and report the best validation loss
(nats/char and bits/char on the last 10% of the text) reached within each checkpoint of the budget.

    python bench/quality.py                                  # the default recipe, 30 minutes
    python bench/quality.py --preset shakespeare-30min       # the preset shipped for this
    python bench/quality.py --minutes 10 --flags "--hidden 512"

It runs `charrnn train` as a user would (validation once per epoch, evaluation time counted in the
budget) and reads the run's metrics.jsonl. Figures depend on the machine: run it where you train.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def best_within(epochs: list[dict], seconds: float) -> dict | None:
    scored = [e for e in epochs if e.get("val_loss") is not None and e["elapsed"] <= seconds]
    return min(scored, key=lambda e: e["val_loss"]) if scored else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="a charrnn preset (default: the default recipe)")
    parser.add_argument("--minutes", type=float, default=30.0, help="the wall-clock budget")
    parser.add_argument("--report", default="10,30", help="minute marks to report (default 10,30)")
    parser.add_argument("--flags", default="", help="extra `charrnn train` flags, quoted")
    parser.add_argument("--run", help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else Path(tmp) / "run"
        command = [sys.executable, "-m", "charrnn", "train", "--run", str(run), "--max-minutes", str(args.minutes),
                   "--checkpoint-every", "0"]
        # A preset plans its own epochs (its learning-rate schedule depends on them); the default recipe
        # gets enough epochs to fill the budget.
        command += ["--preset", args.preset] if args.preset else ["--epochs", "1000"]
        command += shlex.split(args.flags)
        print("command:", " ".join(shlex.quote(c) for c in command[1:]).replace(str(run), "RUN"), flush=True)
        started = time.time()
        result = subprocess.run(command, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            sys.exit(f"training failed:\n{result.stderr[-3000:]}")
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        config = json.loads((run / "config.json").read_text())
    epochs = [r for r in records if r["kind"] == "epoch"]
    print(f"recipe: {args.preset or 'default'} {args.flags}".rstrip() + f"; model {config['model']}")
    print(f"trained {epochs[-1]['step']} steps in {(time.time() - started) / 60:.1f} min wall "
          f"({statistics_ms(epochs):.0f} ms/step median), precision {epochs[-1].get('precision')}")
    print(f"{'budget':>8}{'best val nats/char':>20}{'bits/char':>11}{'at epoch':>10}{'at step':>9}")
    for mark in [float(m) for m in args.report.split(",") if float(m) <= args.minutes]:
        best = best_within(epochs, mark * 60)
        if best is None:
            print(f"{mark:6g} m{'no validation yet':>20}")
        else:
            print(f"{mark:6g} m{best['val_loss']:20.4f}{best['val_loss'] / math.log(2):11.4f}{best['epoch']:10}{best['step']:9}")


def statistics_ms(epochs: list[dict]) -> float:
    values = sorted(e["ms_per_step"] for e in epochs)
    return values[len(values) // 2]


if __name__ == "__main__":
    main()
