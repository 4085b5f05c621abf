"""Quality within a wall-clock budget: train a preset on Shakespeare (--val-fraction 0.1) and score its best
(averaged, where the preset averages) weights at each minute mark under the three evaluation protocols
(src/charrnn/model/scoring.py), beside nanoGPT's figure and the goals (TARGETS); then the same preset on a
second corpus at a shorter budget.

    python bench/quality.py --preset shakespeare-30min-stateful --minutes 30 --checkpoints 10,30
    python bench/quality.py --preset shakespeare-30min --minutes 10 --checkpoints 10 --other-minutes 0
    python bench/quality.py --minutes 5 --checkpoints 5 --flags "--hidden 256" --windows 640   # quick look

How the budget is counted. Training runs as `charrnn train` does for a user, validating once per epoch,
and that validation is inside the budget (`--max-minutes` limits training plus validation time; starting
the process and preparing the text are not counted). At each mark the run stops (max-minutes = the
mark), its best.safetensors is scored here under all three protocols, and the run is resumed to the
next mark: resume is exact, so the later marks are those of one uninterrupted run. The scoring at the
marks is NOT counted in the budget (it is the measurement, like nanoGPT's own estimate_loss runs).

The validation text scored at the marks is nanoGPT's split, text[int(0.9 n):] (charrnn's own split
holds out round(0.1 n) characters: the same text to one character). The second corpus is the Vim user
manual (/usr/share/vim/vim*/doc/usr_*.txt, about 640 KB of English prose, package vim-runtime),
concatenated in name order into a temporary file; nothing is downloaded or committed.
Figures depend on the machine and on what else runs on it: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

NANOGPT = 1.4697  # nanoGPT shakespeare_char val loss (6-layer GPT, A100, ~3 min): the windows protocol
TARGETS = {"windows": 1.40, "stateful": 1.37}  # nats/char within 30 minutes on a 2-core CPU
PROTOCOLS = ("chunks", "stateful", "windows")


def shakespeare_path() -> Path:
    for folder in (os.environ.get("CHARRNN_DATA_DIR"), REPO.parent / "shared" / "data", REPO / "data"):
        if folder and (Path(folder) / "shakespeare.txt").is_file():
            return Path(folder) / "shakespeare.txt"
    sys.exit("shakespeare.txt not found: set CHARRNN_DATA_DIR to the folder that holds it")


def build_other_corpus(folder: Path) -> Path | None:
    files = sorted(glob.glob("/usr/share/vim/vim*/doc/usr_*.txt"))
    if not files:
        return None
    path = folder / "vim-user-manual.txt"
    path.write_text("".join(Path(f).read_text(encoding="utf-8", errors="replace") for f in files), encoding="utf-8")
    return path


def cpu_name() -> str:
    try:
        from charrnn.kernels.cpu import cpu_model

        return cpu_model()
    except Exception:  # the bench still reports without it
        return platform.processor() or "unknown CPU"


def train(run: Path, text: Path, minutes: float, preset: str | None, flags: str, first: bool) -> tuple[list[str], str]:
    """Train (or resume) `run` until `minutes` of training time; returns (command, stderr)."""
    if first:
        command = [
            "charrnn",
            "train",
            "--run",
            str(run),
            "--text",
            str(text),
            "--val-fraction",
            "0.1",
            "--max-minutes",
            f"{minutes:g}",
            "--checkpoint-every",
            "0",
            "--tensorboard",
            "off",
        ]
        # A preset plans its own epochs (its learning-rate schedule depends on them); the default recipe
        # gets enough epochs to fill the budget.
        command += ["--preset", preset] if preset else ["--epochs", "1000"]
        command += shlex.split(flags)
    else:
        command = ["charrnn", "train", "--resume", str(run), "--max-minutes", f"{minutes:g}"]
    result = subprocess.run(
        [sys.executable, "-m", *command],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    if result.returncode != 0:
        sys.exit(f"training failed:\n{result.stderr[-3000:]}")
    return command, result.stderr


def score(run: Path, text: Path, windows: int) -> dict[str, float]:
    """The three protocols for the run's best weights on nanoGPT's validation split."""
    import charrnn

    content = text.read_text(encoding="utf-8")
    val = content[int(0.9 * len(content)) :]
    model = charrnn.load(run, checkpoint="best")
    return {p: model.evaluate(val, drop_unknown=True, protocol=p, windows=windows)["loss"] for p in PROTOCOLS}


def bench(
    name: str, text: Path, marks: list[float], preset: str | None, flags: str, windows: int, keep: Path | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = (keep / name) if keep else Path(tmp) / "run"
        if run.exists():
            shutil.rmtree(run)
        rows, command, finished = [], None, False
        started = time.time()
        for index, mark in enumerate(marks):
            if not finished:
                used, stderr = train(run, text, mark, preset, flags, first=index == 0)
                command = command or used
                finished = "stopping early" in stderr or "stopped after --max-minutes" not in stderr
            began = time.time()
            losses = score(run, text, windows)
            epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            epochs = [e for e in epochs if e.get("kind") == "epoch"]
            scored = [e for e in epochs if e.get("val_loss") is not None]
            best = min(scored, key=lambda e: e["val_loss"]) if scored else {}
            rows.append((mark, losses, best, epochs[-1] if epochs else {}, time.time() - began, finished))
        config = json.loads((run / "config.json").read_text())
    print(f"\n== {name}: {text.name} ({config['corpus']['chars']:,} characters), validation text[int(0.9 n):] ==")
    print("command:", " ".join(shlex.quote(c) for c in command).replace(str(run), "RUN"))
    print(f"model {config['model']}")
    print(f"train {json.dumps({k: v for k, v in config['train'].items() if k not in ('text',)})}")
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}; "
        f"wall {(time.time() - started) / 60:.1f} min in all"
    )
    header = f"{'budget':>7}{'chunks':>9}{'stateful':>10}{'windows':>9}   {'best epoch':>10}{'step':>7}{'ms/step':>9}  {'val criterion':<14}{'scoring s':>10}"
    print(header)
    for mark, losses, best, last, seconds, finished in rows:
        stop = " (run had stopped)" if finished else ""
        print(
            f"{mark:5g} m{losses['chunks']:9.4f}{losses['stateful']:10.4f}{losses['windows']:9.4f}   "
            f"{best.get('epoch', '-'):>10}{best.get('step', '-'):>7}{last.get('ms_per_step', float('nan')):9.0f}  "
            f"{best.get('val_protocol', 'chunks'):<14}{seconds:10.0f}{stop}"
        )
    final = rows[-1][1]
    if name != "shakespeare":
        return  # nanoGPT's figure and the targets are Shakespeare's
    print(
        f"nanoGPT (windows protocol): {NANOGPT:.4f}; bits/char at the last mark: "
        + ", ".join(f"{p} {final[p] / math.log(2):.4f}" for p in PROTOCOLS)
    )
    for protocol, target in TARGETS.items():
        verdict = "met" if final[protocol] <= target else f"missed by {final[protocol] - target:.4f}"
        print(f"target {protocol} <= {target:.2f}: {final[protocol]:.4f} ({verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="a charrnn preset (default: the default recipe)")
    parser.add_argument("--minutes", type=float, default=30.0, help="the Shakespeare budget (default 30)")
    parser.add_argument("--checkpoints", default="10,30", help="minute marks scored (default 10,30; <= --minutes)")
    parser.add_argument(
        "--other-minutes", type=float, default=10.0, help="budget on the second corpus (default 10; 0 = skip it)"
    )
    parser.add_argument("--flags", default="", help="extra `charrnn train` flags, quoted")
    parser.add_argument(
        "--windows", type=int, default=12_800, help="windows protocol: windows scored (default 200 x 64)"
    )
    parser.add_argument("--run", type=Path, help="keep the runs in this folder (default: temporary)")
    args = parser.parse_args()
    marks = sorted({float(m) for m in args.checkpoints.split(",") if m.strip()} | {args.minutes})
    marks = [m for m in marks if m <= args.minutes]
    if args.run:
        args.run.mkdir(parents=True, exist_ok=True)
    bench("shakespeare", shakespeare_path(), marks, args.preset, args.flags, args.windows, args.run)
    if args.other_minutes > 0:
        with tempfile.TemporaryDirectory() as tmp:
            other = build_other_corpus(Path(tmp))
            if other is None:
                print(
                    "\nsecond corpus skipped: the Vim user manual (/usr/share/vim/vim*/doc/usr_*.txt) is not installed"
                )
                return
            bench("vim-user-manual", other, [args.other_minutes], args.preset, args.flags, args.windows, args.run)


if __name__ == "__main__":
    main()
