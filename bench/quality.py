"""Quality within a wall-clock budget: train a recipe on Shakespeare (--val-fraction 0.1) and score its best
(averaged) weights under the three evaluation protocols (src/charrnn/model/scoring.py), beside nanoGPT's
figure and the goals (TARGETS); then the recipe and the tutorial's default on three more corpora.

    python bench/quality.py --minutes 1,3,10,30 --other-minutes 10          # the recipe (--preset auto)
    python bench/quality.py --preset shakespeare-30min-stateful --minutes 30 --checkpoints 10,30 --other-minutes 0
    python bench/quality.py --minutes 3 --corpora python --other-minutes 3 --windows 640   # quick look

How the budget is counted. Training runs as `charrnn train` does for a user, validating once per epoch,
and that validation is inside the budget (`--max-minutes` limits training plus validation time; starting
the process, preparing the text and the recipe's measurements are not counted). The recipe plans for its
budget, so each of --minutes is a run of its own. A fixed preset is one run of the longest budget: at each
mark of --checkpoints it stops, its best.safetensors is scored, and it is resumed (exactly) to the next.
The scoring is NOT counted in the budget (it is the measurement, like nanoGPT's own estimate_loss runs).

The validation text scored is nanoGPT's split, text[int(0.9 n):] (charrnn's own split holds out
round(0.1 n) characters: the same text to one character). The other corpora are built in a temporary
folder from files on this machine; nothing is committed:
  vim      the Vim user manual (/usr/share/vim/vim*/doc/usr_*.txt, ~640 KB of English prose, vim-runtime);
  chinese  Debian's fortunes-zh (Chinese verse and sayings, ~1.1M characters, ~6,000 distinct), taken
           from /usr/share/games/fortunes when installed, else fetched with `apt-get download`;
  python   the Python standard library's sources (/usr/lib/python3.*/**/*.py, ~11 MB of code).
On each, the recipe is compared with the tutorial's default (--preset tutorial: one GRU of 1024, Adam 1e-3,
batch 64 x 100) at the same budget and split.
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
# nats/char within each budget (minutes) on a 2-core CPU
TARGETS = {30: {"windows": 1.40, "stateful": 1.37}, 10: {"windows": 1.42}, 3: {"windows": 1.47}, 1: {"windows": 1.53}}
PROTOCOLS = ("chunks", "stateful", "windows")


def shakespeare_path() -> Path:
    for folder in (os.environ.get("CHARRNN_DATA_DIR"), REPO.parent / "shared" / "data", REPO / "data"):
        if folder and (Path(folder) / "shakespeare.txt").is_file():
            return Path(folder) / "shakespeare.txt"
    sys.exit("shakespeare.txt not found: set CHARRNN_DATA_DIR to the folder that holds it")


def vim_corpus(folder: Path) -> Path | None:
    files = sorted(glob.glob("/usr/share/vim/vim*/doc/usr_*.txt"))
    if not files:
        return None
    path = folder / "vim-user-manual.txt"
    path.write_text("".join(Path(f).read_text(encoding="utf-8", errors="replace") for f in files), encoding="utf-8")
    return path


def chinese_corpus(folder: Path) -> Path | None:
    names = ("chinese", "tang300", "song100")
    where = Path("/usr/share/games/fortunes")
    if not (where / names[0]).is_file():
        fetched = subprocess.run(["apt-get", "download", "fortunes-zh"], cwd=folder, capture_output=True)
        debs = sorted(folder.glob("fortunes-zh_*.deb"))
        if fetched.returncode != 0 or not debs:
            return None
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(folder / "deb")], check=True)
        where = folder / "deb" / "usr/share/games/fortunes"
    path = folder / "fortunes-zh.txt"
    path.write_text("".join((where / n).read_text(encoding="utf-8") for n in names), encoding="utf-8")
    return path


def python_corpus(folder: Path) -> Path | None:
    files = sorted(glob.glob("/usr/lib/python3.*/**/*.py", recursive=True))
    if not files:
        return None
    path = folder / "python-stdlib.txt"
    path.write_text("".join(Path(f).read_text(encoding="utf-8", errors="replace") for f in files), encoding="utf-8")
    return path


CORPORA = {"vim": vim_corpus, "chinese": chinese_corpus, "python": python_corpus}


def cpu_name() -> str:
    try:
        from charrnn.kernels.cpu import cpu_model

        return cpu_model()
    except Exception:  # the bench still reports without it
        return platform.processor() or "unknown CPU"


def train(run: Path, text: Path, minutes: float, preset: str | None, flags: str, first: bool) -> tuple[list[str], str]:
    """Train (or resume) `run` until `minutes` of training time; returns (command, stderr). `preset`: a
    charrnn preset, "auto" for the recipe, or None for the tutorial's default recipe."""
    if first:
        command = [
            "charrnn",
            "train",
            "--run",
            str(run),
            "--text",
            str(text),
            "--max-minutes",
            f"{minutes:g}",
            "--checkpoint-every",
            "0",
            "--tensorboard",
            "off",
        ]
        # A preset plans its own epochs (its learning-rate schedule depends on them); the tutorial's
        # default gets enough epochs to fill the budget.
        command += ["--preset", preset] if preset else ["--preset", "tutorial", "--epochs", "1000"]
        command += ["--val-fraction", "0.1", *shlex.split(flags)]
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


def epoch_records(run: Path) -> tuple[list[dict], dict]:
    """The run's epoch lines from metrics.jsonl, and the one with the best validation loss ({} if none)."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in lines if e.get("kind") == "epoch"]
    scored = [e for e in epochs if e.get("val_loss") is not None]
    return epochs, min(scored, key=lambda e: e["val_loss"]) if scored else {}


def score(run: Path, text: Path, windows: int) -> dict[str, float]:
    """The three protocols for the run's best weights on nanoGPT's validation split."""
    import charrnn

    content = text.read_text(encoding="utf-8")
    val = content[int(0.9 * len(content)) :]
    model = charrnn.load(run, checkpoint="best")
    return {p: model.evaluate(val, drop_unknown=True, protocol=p, windows=windows)["loss"] for p in PROTOCOLS}


def bench(
    name: str, text: Path, marks: list[float], preset: str | None, flags: str, windows: int, keep: Path | None
) -> list[dict[str, float]]:
    """Train `preset` on `text`, score it at each mark; prints the table and returns the losses per mark."""
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
            epochs, best = epoch_records(run)
            rows.append((mark, losses, best, epochs[-1] if epochs else {}, time.time() - began, finished))
        config = json.loads((run / "config.json").read_text())
    print(f"\n== {name}: {text.name} ({config['corpus']['chars']:,} characters), validation text[int(0.9 n):] ==")
    print("command:", " ".join(shlex.quote(c) for c in command).replace(str(run), "RUN").replace(str(text), "TEXT"))
    print(f"model {config['model']}")
    print(f"train {json.dumps({k: v for k, v in config['train'].items() if k not in ('text',)})}")
    if config.get("plan"):
        print(f"plan {json.dumps(config['plan'])}")
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}; "
        f"wall {(time.time() - started) / 60:.1f} min in all"
    )
    header = f"{'budget':>7}{'chunks':>9}{'stateful':>10}{'windows':>9}   {'best epoch':>10}{'step':>7}{'best at':>9}{'ms/step':>9}  {'val criterion':<14}{'scoring s':>10}"
    print(header)
    for mark, losses, best, last, seconds, finished in rows:
        stop = " (run had stopped)" if finished else ""
        where = best.get("elapsed", float("nan")) / (60 * mark)  # of the budget, when the best was scored
        print(
            f"{mark:5g} m{losses['chunks']:9.4f}{losses['stateful']:10.4f}{losses['windows']:9.4f}   "
            f"{best.get('epoch', '-'):>10}{best.get('step', '-'):>7}{100 * where:8.0f}%{last.get('ms_per_step', float('nan')):9.0f}  "
            f"{best.get('val_protocol', 'chunks'):<14}{seconds:10.0f}{stop}"
        )
    return [r[1] for r in rows]


def verdict(losses: dict[str, float], minutes: float) -> None:
    print(
        f"nanoGPT (windows protocol): {NANOGPT:.4f}; bits/char: "
        + ", ".join(f"{p} {losses[p] / math.log(2):.4f}" for p in PROTOCOLS)
    )
    for protocol, target in TARGETS.get(minutes, {}).items():
        result = "met" if losses[protocol] <= target else f"missed by {losses[protocol] - target:.4f}"
        print(f"target at {minutes:g} minutes: {protocol} <= {target:.2f}: {losses[protocol]:.4f} ({result})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="auto", help="a charrnn preset (default: auto, the recipe)")
    parser.add_argument("--minutes", default="30", help="Shakespeare budgets, comma-separated (default 30)")
    parser.add_argument("--checkpoints", default="", help="a fixed preset: minute marks scored within its run")
    parser.add_argument(
        "--other-minutes", type=float, default=10.0, help="budget on the other corpora (default 10; 0 = skip them)"
    )
    parser.add_argument("--corpora", default="vim,chinese,python", help=f"other corpora: {', '.join(CORPORA)}")
    parser.add_argument("--flags", default="", help="extra `charrnn train` flags, quoted")
    parser.add_argument(
        "--windows", type=int, default=12_800, help="windows protocol: windows scored (default 200 x 64)"
    )
    parser.add_argument("--run", type=Path, help="keep the runs in this folder (default: temporary)")
    args = parser.parse_args()
    budgets = sorted(float(m) for m in args.minutes.split(",") if m.strip())
    if args.run:
        args.run.mkdir(parents=True, exist_ok=True)
    text = shakespeare_path()
    if args.preset == "auto":  # the recipe plans for its budget: one run per budget
        for minutes in budgets:
            verdict(
                bench(f"shakespeare-{minutes:g}min", text, [minutes], "auto", args.flags, args.windows, args.run)[0],
                minutes,
            )
    elif budgets:
        marks = sorted({float(m) for m in args.checkpoints.split(",") if m.strip()} | {budgets[-1]})
        losses = bench("shakespeare", text, marks, args.preset, args.flags, args.windows, args.run)
        for mark, scored in zip(marks, losses):
            verdict(scored, mark)
    if args.other_minutes <= 0:
        return
    for corpus in [c.strip() for c in args.corpora.split(",") if c.strip()]:
        with tempfile.TemporaryDirectory() as tmp:
            path = CORPORA[corpus](Path(tmp))
            if path is None:
                print(f"\n{corpus} skipped: its files are not on this machine (see the doc above)")
                continue
            minutes = [args.other_minutes]
            recipe = bench(f"{corpus}-{args.preset}", path, minutes, args.preset, args.flags, args.windows, args.run)[0]
            default = bench(f"{corpus}-default", path, minutes, None, "", args.windows, args.run)[0]
            print(
                f"{corpus}, {args.other_minutes:g} minutes, {args.preset} against the default: "
                + ", ".join(
                    f"{p} {recipe[p]:.4f} vs {default[p]:.4f} ({recipe[p] - default[p]:+.4f})" for p in PROTOCOLS
                )
            )


if __name__ == "__main__":
    main()
