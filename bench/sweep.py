"""Sweep the recipe's choices (src/charrnn/training/recipe.py) on short budgets: each variant is
`charrnn train --preset auto --max-minutes M` plus flags that override one choice, trained on Shakespeare
(--val-fraction 0.1) and scored on nanoGPT's split text[int(0.9 n):] under the three protocols, as
bench/quality.py scores. The table in docs/quality.md comes from runs of this script.

    python bench/sweep.py --minutes 3 --variant "plan=" --variant "chunks=--no-stateful"
    python bench/sweep.py --minutes 1 --windows 3200 --variant "plan=" --variant "1x256=--layers 1 --hidden 256"

A variant is NAME=FLAGS (FLAGS may be empty: the plan as it is). Runs go one after another, never in
parallel: each is a timing. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import PROTOCOLS, cpu_name, epoch_records, score, shakespeare_path, train  # noqa: E402


def subset(text: Path, train_chars: int, folder: Path) -> tuple[Path, str]:
    """A corpus of the first `train_chars` characters of `text` followed by its nanoGPT validation split,
    and the --val-fraction that holds out exactly that split: more passes over less text in the same
    minutes, to try the recipe where a longer budget would put it."""
    content = text.read_text(encoding="utf-8")
    val = content[int(0.9 * len(content)) :]
    path = folder / f"{text.stem}-{train_chars}.txt"
    path.write_text(content[:train_chars] + val, encoding="utf-8")
    return path, f"--val-fraction {len(val) / (train_chars + len(val)):.6f}"


def run_variant(name: str, flags: str, text: Path, scored: Path, minutes: float, windows: int, folder: Path) -> dict:
    run = folder / name
    started = time.time()
    train(run, text, minutes, "auto", flags, first=True)
    losses = score(run, scored, windows)
    config = json.loads((run / "config.json").read_text())
    epochs, best = epoch_records(run)
    last = epochs[-1]
    m, t = config["model"], config["train"]
    return {
        "name": name,
        "flags": flags,
        "losses": losses,
        "shape": f"{m['num_layers']}x{m['hidden_size']}",
        "regularisation": f"d{m['dropout']} wd{m['weight_drop']} ed{m['embedding_dropout']} "
        f"decay{t['weight_decay']} ema{t['ema']}",
        "mode": "stateful" if t["stateful"] else "chunks",
        "steps": f"{last['step']}/{t['max_steps']}",
        "best_at": best["elapsed"] / last["elapsed"],
        "train_loss": last.get("train_loss", float("nan")),
        "wall": time.time() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="each variant's budget (default 3)")
    parser.add_argument("--variant", action="append", default=[], help="NAME=FLAGS, repeatable")
    parser.add_argument("--windows", type=int, default=3_200, help="windows protocol: windows scored (default 3200)")
    parser.add_argument("--text", type=Path, help="the corpus (default Shakespeare)")
    parser.add_argument("--run", type=Path, help="keep the runs in this folder (default: temporary)")
    parser.add_argument(
        "--train-chars", type=int, default=0, help="train on only this many characters (the validation split stays)"
    )
    args = parser.parse_args()
    text = args.text or shakespeare_path()
    variants = [v.split("=", 1) for v in (args.variant or ["plan="])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.run or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        corpus, extra = subset(text, args.train_chars, Path(tmp)) if args.train_chars else (text, "")
        for name, flags in variants:
            rows.append(run_variant(name, f"{extra} {flags}".strip(), corpus, text, args.minutes, args.windows, folder))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.minutes:g}-minute budget on {text.name}; CPU: {cpu_name()}, {os.cpu_count()} logical cores")
    print(f"command: python bench/sweep.py {' '.join(sys.argv[1:])}")
    print(
        f"| variant | flags | model | regularisation | mode | steps | {' | '.join(PROTOCOLS)} | best at | train loss |"
    )
    print("| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        losses = " | ".join(f"{r['losses'][p]:.4f}" for p in PROTOCOLS)
        print(
            f"| {r['name']} | `{r['flags']}` | {r['shape']} | {r['regularisation']} | {r['mode']} | {r['steps']} | "
            f"{losses} | {100 * r['best_at']:.0f}% | {r['train_loss']:.3f} |"
        )


if __name__ == "__main__":
    main()
