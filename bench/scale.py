"""Scale: preparation speed, cache-hit start, memory and validation time on a large corpus, and DDP.

    python bench/scale.py                          # the 1 GB measurement (up to 3 GB of temporary disk)
    python bench/scale.py --size-mb 30 --steps 3 --ddp-steps 6 --eval-chars 100000   # a quick check that it runs

Builds a text corpus of --size-mb from real text on this machine (the UTF-8 headers under /usr/include
and text files under /usr/share/doc and /usr/share/common-licenses, repeated to the size) in a temporary
folder, then runs the real command line in subprocesses:

  1. preparation, cold cache: MB/s end to end (read, decode, vocabulary, encode, write) and its memory;
  2. `charrnn train` with the default model and the cache in place: seconds from the command to the
     first training step, ms/step, and peak RssAnon (anonymous memory, sampled from /proc/PID/status
     every 20 ms) beside the size of the memory-mapped ids;
  3. validation on the bounded sample (--eval-chars, default 2,000,000) against one training epoch, and
     what the whole validation split would cost;
  4. a small model (GRU 256, embedding 64, batch 64 x 100) as 2 processes x 1 thread (DDP, gloo) and as
     1 process x 2 threads: steps/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charrnn.kernels.cpu import cpu_model  # torch-free: no import cost here

ROOT = Path(__file__).resolve().parents[1]
PART_BYTES = 64 << 20  # corpus files of about this size
SOURCES = (("/usr/include", ("*.h", "*.hpp")), ("/usr/share/doc", ("*",)), ("/usr/share/common-licenses", ("*",)))


def real_text(limit: int) -> list[bytes]:
    """Up to `limit` bytes of UTF-8 text files from this machine, whole files, in a fixed order."""
    texts, total = [], 0
    for root, patterns in SOURCES:
        for pattern in patterns:
            for path in sorted(Path(root).rglob(pattern)) if Path(root).is_dir() else []:
                if total >= limit:
                    return texts
                try:
                    if (
                        not path.is_file()
                        or path.is_symlink()
                        or path.suffix in (".gz", ".xz", ".bz2", ".zst", ".pdf", ".png")
                    ):
                        continue
                    data = path.read_bytes()
                    data.decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if data and b"\0" not in data:
                    texts.append(data)
                    total += len(data)
    return texts


def build_corpus(folder: Path, size: int) -> tuple[int, int]:
    """part-NNNN.txt files totalling about `size` bytes; returns (bytes, distinct source bytes)."""
    texts = real_text(min(size, 256 << 20))
    if not texts:
        raise SystemExit("no UTF-8 text found under " + ", ".join(r for r, _ in SOURCES))
    folder.mkdir(parents=True, exist_ok=True)
    written, part = 0, None
    while written < size:
        for data in texts:
            if part is None or part.tell() >= PART_BYTES:
                if part:
                    part.close()
                part = open(folder / f"part-{len(list(folder.iterdir())):04d}.txt", "wb")
            part.write(data)
            written += len(data)
            if written >= size:
                break
    part.close()
    return written, sum(map(len, texts))


def env(cache: Path, threads: int | None = None) -> dict[str, str]:
    out = {**os.environ, "CHARRNN_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT / "src")}
    if threads:
        out["OMP_NUM_THREADS"] = str(threads)
    return out


def rss_anon_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def watch(cmd: list[str], environ: dict[str, str], metrics: Path | None = None, timeout: float = 7200) -> dict:
    """Run `cmd`, sampling RssAnon of it and its children; note when `metrics` gets its first step line."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, first_step = 0, None
    while proc.poll() is None:
        pids = [proc.pid] + [int(p) for p in _children(proc.pid)]
        peak = max(peak, sum(rss_anon_kb(p) for p in pids))
        if first_step is None and metrics is not None and metrics.is_file() and '"kind": "step"' in metrics.read_text():
            first_step = time.monotonic() - started
        if time.monotonic() - started > timeout:
            proc.kill()
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return {
        "seconds": time.monotonic() - started,
        "peak_rss_anon_mb": peak / 1024,
        "first_step_s": first_step,
        "stdout": out,
        "stderr": err,
    }


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def step_times(metrics: Path, skip: int = 2) -> list[float]:
    """Seconds per step from consecutive step records (log_every 1), after `skip` warm-up steps."""
    steps = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "step"]
    times = [b["elapsed"] - a["elapsed"] for a, b in zip(steps, steps[1:])]
    return times[min(skip, len(times) - 1) :] or [float("nan")]


PREPARE = """
import json, sys, time, resource
from charrnn.data.prepare import prepare
t = time.perf_counter()
p = prepare(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t, "chars": p.chars, "vocab": len(p.vocab), "npy": str(p.path),
                  "cached": p.cached}))
"""

EVALUATE = """
import json, sys, time
import numpy as np
from charrnn.model.weights import load_run
from charrnn.data.batches import eval_sample, split
from charrnn.model.scoring import evaluate_loss
from charrnn.model.precision import resolve_device, resolve_precision
from charrnn.data.prepare import prepare
model, vocab, _, config, _ = load_run(sys.argv[1], "latest", device=resolve_device(sys.argv[2]))
model.compute_dtype = resolve_precision(config.precision, model.dense.weight.device)
ids = prepare(config.text, encoding=config.encoding, skip_chars=config.skip_chars, decode_errors=config.decode_errors).ids
_, val = split(ids, config.val_fraction)
sample = eval_sample(val, config.eval_chars, config.seq_len)
t = time.perf_counter()
loss = evaluate_loss(model, sample, config.seq_len, config.batch_size)
print(json.dumps({"seconds": time.perf_counter() - t, "sample": int(len(sample)), "val": int(len(val)), "loss": loss}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="corpus size (default 1024 = 1 GB)")
    parser.add_argument("--steps", type=int, default=20, help="training steps of the default model (default 20)")
    parser.add_argument("--ddp-steps", type=int, default=30, help="steps of the small model per layout (default 30)")
    parser.add_argument(
        "--eval-chars",
        type=int,
        default=2_000_000,
        help="the bounded validation sample (default 2,000,000, charrnn's default)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="device of the default-model run (default auto)",
    )
    parser.add_argument(
        "--workdir", default=None, help="where the temporary corpus, cache and runs go (default $TMPDIR)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="charrnn-scale-", dir=args.workdir))
    try:
        run_all(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run_all(args, work: Path) -> None:
    python = sys.executable
    corpus, cache = work / "corpus", work / "cache"
    t = time.perf_counter()
    size, distinct = build_corpus(corpus, args.size_mb << 20)
    print(
        f"built {size / 1e6:,.0f} MB corpus ({distinct / 1e6:,.0f} MB of distinct text, repeated) in {time.perf_counter() - t:.0f} s",
        file=sys.stderr,
    )
    text = str(corpus / "*.txt")

    # 1. preparation, cold
    prep = watch([python, "-c", PREPARE, text], env(cache))
    info = json.loads(prep["stdout"])
    npy_mb = Path(info["npy"]).stat().st_size / 1e6

    # 2. default model with the cache in place. A user's second run also finds the fused kernels built
    # and the CPU probed (once per machine, in the same cache), so do those first, untimed.
    subprocess.run(
        [python, "-c", "import charrnn.model, charrnn.kernels as k; k.available()"], env=env(cache), check=True
    )
    run = work / "runs" / "default"
    train = watch(
        [
            python,
            "-m",
            "charrnn",
            "train",
            "--text",
            text,
            "--run",
            str(run),
            "--max-steps",
            str(args.steps),
            "--log-every",
            "1",
            "--checkpoint-every",
            "0",
            "--eval-chars",
            str(args.eval_chars),
            "--device",
            args.device,
        ],
        env(cache),
        metrics=run / "metrics.jsonl",
    )
    ms_step = 1000 * statistics.median(step_times(run / "metrics.jsonl"))
    config = json.loads((run / "config.json").read_text())
    steps_per_epoch = (
        config["corpus"]["train_chars"] // (config["train"]["seq_len"] + 1) // config["train"]["batch_size"]
    )

    # 3. validation on the bounded sample against one epoch of training
    evaluation = watch([python, "-c", EVALUATE, str(run), args.device], env(cache))
    ev = json.loads(evaluation["stdout"])
    epoch_s = steps_per_epoch * ms_step / 1000
    full_val_s = ev["seconds"] * ev["val"] / max(1, ev["sample"])

    # 4. DDP: 2 processes x 1 thread against 1 process x 2 threads, small model
    small = [
        "--text",
        text,
        "--hidden",
        "256",
        "--embedding",
        "64",
        "--max-steps",
        str(args.ddp_steps),
        "--log-every",
        "1",
        "--checkpoint-every",
        "0",
        "--eval-chars",
        "20000",
    ]
    layouts = {}
    for name, extra, threads in (("2 processes x 1 thread", ["--nproc", "2"], 1), ("1 process x 2 threads", [], 2)):
        path = work / "runs" / name.replace(" ", "_")
        watch([python, "-m", "charrnn", "train", *extra, "--run", str(path), *small], env(cache, threads))
        layouts[name] = 1 / statistics.median(step_times(path / "metrics.jsonl"))

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"command: python bench/scale.py {' '.join(sys.argv[1:])}".rstrip())
    rows = [
        ("corpus", f"{size / 1e6:,.0f} MB, {info['chars']:,} characters, vocabulary {info['vocab']}", ""),
        (
            "preparation, cold cache",
            f"{size / 1e6 / info['seconds']:,.0f} MB/s ({info['seconds']:.1f} s)",
            "target >= 100 MB/s",
        ),
        ("preparation peak RssAnon", f"{prep['peak_rss_anon_mb']:,.0f} MB", ""),
        ("first step, cache in place", f"{train['first_step_s']:.1f} s after the command", "target <= 15 s"),
        (
            "training peak RssAnon",
            f"{train['peak_rss_anon_mb']:,.0f} MB (memory-mapped ids: {npy_mb:,.0f} MB)",
            "target <= 1 GB",
        ),
        (
            f"default model ({args.device})",
            f"{ms_step:,.0f} ms/step, {steps_per_epoch:,} steps/epoch = {epoch_s / 3600:,.1f} h/epoch",
            "",
        ),
        (
            "validation, bounded sample",
            f"{ev['seconds']:,.1f} s for {ev['sample']:,} characters",
            f"vs {epoch_s:,.0f} s training/epoch",
        ),
        ("validation, whole split", f"~{full_val_s:,.0f} s for {ev['val']:,} characters (--eval-chars 0)", ""),
    ] + [(f"small model, {name}", f"{rate:.2f} steps/s", "") for name, rate in layouts.items()]
    width = max(len(r[0]) for r in rows) + 2
    for label, value, note in rows:
        print(f"{label:<{width}}{value}" + (f"   ({note})" if note else ""))


if __name__ == "__main__":
    main()
