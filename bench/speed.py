"""Speed and memory of charrnn against the tutorial's TensorFlow peer, side by side on this machine.

    python bench/speed.py                    # ours (every precision) and the peer, 30 timed steps each
    python bench/speed.py --steps 60 --skip-peer
    python bench/speed.py --learning-check   # also: one epoch fp32 vs bf16 from the same seed
    python bench/speed.py --skip-train --peer-python /path/to/tf-venv/bin/python   # generation only, TF elsewhere

Each measurement runs in its own process (so peak RSS is that job's alone) on Shakespeare with the
tutorial's shapes: embedding 256, GRU 1024, batch 64 x sequence 100, Adam. Training figures are the
median step time after warm-up steps; generation figures are the median of repeated runs with the model
already loaded. The peer needs tensorflow-cpu (`pip install -e .[bench]`, or a separate venv given with
--peer-python: it imports only numpy, tensorflow and charrnn's torch-free text reader); without it,
it is skipped. Also measured: one model step by precision and batch size (and which precision `auto`
picks), and the time from starting `charrnn generate` to its first generated character.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from charrnn.kernels.cpu import cpu_model  # torch-free

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def shakespeare() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from charrnn.data.reader import load_text

    return load_text("shakespeare").text


# -- workers: each prints one JSON line ---------------------------------------------------------------
def worker_train_ours(args) -> dict:
    """Trainer.train_step, the step every `charrnn train` runs, on the tutorial's model and batches."""
    import tempfile

    import numpy as np
    import torch

    from charrnn.config import TrainConfig
    from charrnn.kernels import build as kernels
    from charrnn.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as run, open(os.devnull, "w") as quiet:
        config = TrainConfig(val_fraction=0.0, precision=args.precision, seed=args.seed)
        trainer = Trainer.create(Path(run) / "run", config, out=quiet)
        times, losses = [], []
        for step, (inputs, targets) in enumerate(trainer.batches.epoch(0)):
            if step == args.warmup + args.steps:
                break
            started = time.perf_counter()
            losses.append(trainer.train_step(inputs, targets))
            times.append(time.perf_counter() - started)
    timed = times[args.warmup :]
    return {
        "ms_per_step": 1000 * statistics.median(timed),
        "ms_min": 1000 * min(timed),
        "running_loss": float(np.mean(losses)),
        "precision": trainer.precision,
        "fused_kernels": kernels.available(),
        "threads": torch.get_num_threads(),
        "versions": f"torch {torch.__version__}",
    }


def tutorial_model(precision: str):
    """The tutorial's model (untrained: speed does not depend on the weights) on Shakespeare's vocabulary."""
    import torch

    from charrnn.config import ModelConfig
    from charrnn.data.vocab import Vocab
    from charrnn.generation.torch_model import CharModel
    from charrnn.model.network import CharRNN

    vocab = Vocab.from_text(shakespeare())
    torch.manual_seed(0)
    return CharModel(CharRNN(ModelConfig(vocab_size=len(vocab))), vocab, precision=precision)


def worker_generate_ours(args) -> dict:
    """Generation as `charrnn generate` runs it (model loaded): 1000 characters at batch 1, 5 and 64."""
    import torch

    from charrnn.model.precision import precision_name

    model = tutorial_model(args.precision)
    out = {"threads": torch.get_num_threads()}
    for batch in (1, 5, 64):
        model.generate("ROMEO:", length=50, num_samples=batch, seed=0)  # warm-up
        times = []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            texts = model.generate("ROMEO:", length=args.chars, num_samples=batch, seed=repeat)
            times.append(time.perf_counter() - started)
            assert len(texts) == batch and len(texts[0]) == len("ROMEO:") + args.chars
        seconds = statistics.median(times)
        out[f"b{batch}"] = {
            "seconds": seconds,
            "chars_per_s": batch * args.chars / seconds,
            "precision": precision_name(model.dtype_for(batch)),
        }
    return out


STEP_BATCHES = (1, 2, 4, 8, 16, 64)


def worker_steps_ours(args) -> dict:
    """Microseconds per model step (Stepper, what generation runs) by precision and batch size."""
    import numpy as np
    import torch

    from charrnn.model.precision import precision_name
    from charrnn.model.stepper import Stepper

    model = tutorial_model("auto")
    out = {}
    from charrnn.kernels import step as stepkernels

    kinds = [("fp32", torch.float32), ("bf16", torch.bfloat16)] + (
        [("int8", torch.int8)] if stepkernels.usable(torch.int8) else []
    )
    for precision, dtype in kinds:
        for batch in STEP_BATCHES:
            stepper, ids = Stepper(model.model, dtype), np.zeros(batch, dtype=np.int64)
            state = model.model.initial_state(batch)
            steps = max(20, 2000 // batch)
            for _ in range(10):
                _, state = stepper.step_numpy(ids, state)
            times = []
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(steps):
                    _, state = stepper.step_numpy(ids, state)
                times.append((time.perf_counter() - started) / steps)
            out[f"{precision}-b{batch}"] = 1e6 * statistics.median(times)
    out["auto"] = {f"b{batch}": precision_name(model.dtype_for(batch)) for batch in STEP_BATCHES}
    return out


def worker_first_char(args) -> dict:
    """Seconds from starting `charrnn generate` on a saved tutorial-size run to its first generated
    character on stdout (imports, loading, priming): what a user waits for."""
    import tempfile

    from charrnn.config import TrainConfig
    from charrnn.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet:
        run = Path(tmp) / "run"
        Trainer.create(run, TrainConfig(val_fraction=0.0, max_steps=1, tensorboard="off"), out=quiet).fit()
        command = [
            sys.executable,
            "-m",
            "charrnn",
            "generate",
            str(run),
            "--prompt",
            "ROMEO:",
            "--length",
            "1000",
            "--seed",
            "0",
        ]
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            )
            process.stdout.read(len("ROMEO:") + 1)  # the prompt, then the first generated character
            times.append(time.perf_counter() - started)
            process.stdout.read()
            process.wait()
    return {"seconds": statistics.median(times)}


def worker_train_peer(args) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    import peer_tf

    times, losses, params = peer_tf.train(shakespeare(), args.warmup + args.steps, seed=args.seed)
    timed = times[args.warmup :]
    # Keras reports the running mean of the epoch's loss, the same figure as ours above.
    return {
        "ms_per_step": 1000 * statistics.median(timed),
        "ms_min": 1000 * min(timed),
        "running_loss": losses[-1],
        "parameters": params,
        "versions": peer_tf.versions(),
    }


def worker_generate_peer(args) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    import peer_tf

    text = shakespeare()
    out = {}
    for batch in (1, 5, 64):
        seconds = statistics.median(peer_tf.generate(text, args.chars, batch, repeats=args.repeats))
        out[f"b{batch}"] = {"seconds": seconds, "chars_per_s": batch * args.chars / seconds}
    return out


def worker_learning(args) -> dict:
    """One epoch with the default recipe (10% validation) at the given precision; its losses."""
    import tempfile

    import torch

    from charrnn.config import TrainConfig
    from charrnn.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as run, open(os.devnull, "w") as quiet:
        config = TrainConfig(epochs=1, precision=args.precision, seed=args.seed, checkpoint_every=0)
        trainer = Trainer.create(Path(run) / "run", config, out=quiet)
        started = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - started
        epoch = [json.loads(x) for x in (Path(run) / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    return {
        "train_loss": epoch["train_loss"],
        "val_loss": epoch["val_loss"],
        "seconds": seconds,
        "ms_per_step": epoch["ms_per_step"],
        "precision": trainer.precision,
        "threads": torch.get_num_threads(),
    }


WORKERS = {
    "train-ours": worker_train_ours,
    "generate-ours": worker_generate_ours,
    "train-peer": worker_train_peer,
    "generate-peer": worker_generate_peer,
    "learning": worker_learning,
    "steps-ours": worker_steps_ours,
    "first-char": worker_first_char,
}


def run_worker(name: str, args, python: str | None = None, **extra) -> dict | None:
    command = [
        python or sys.executable,
        __file__,
        "--worker",
        name,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--chars",
        str(args.chars),
        "--repeats",
        str(args.repeats),
        "--seed",
        str(args.seed),
    ]
    for key, value in extra.items():
        command += [f"--{key}", str(value)]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}
    )
    if result.returncode != 0:
        print(f"  {name} {extra} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def peer_available(python: str) -> bool:
    return subprocess.run([python, "-c", "import tensorflow"], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per job")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--chars", type=int, default=1000, help="characters per generation")
    parser.add_argument("--repeats", type=int, default=5, help="timed generations per batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-peer", action="store_true", help="measure charrnn only")
    parser.add_argument(
        "--peer-python",
        default=sys.executable,
        help="the Python that runs the TensorFlow peer (a venv with tensorflow-cpu; default: this one)",
    )
    parser.add_argument("--learning-check", action="store_true", help="also train one epoch in fp32 and bf16")
    parser.add_argument("--skip-train", action="store_true", help="measure generation only")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = WORKERS[args.worker](args)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return

    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from charrnn.model.precision import bf16_native

    precisions = ["fp32"] + (["bf16"] if bf16_native(torch.device("cpu")) else [])
    peer = not args.skip_peer and peer_available(args.peer_python)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print(f"command: python bench/speed.py {' '.join(sys.argv[1:])}".rstrip())
    train = not args.skip_train
    ours = {p: run_worker("train-ours", args, precision=p) if train else None for p in precisions}
    theirs = run_worker("train-peer", args, args.peer_python) if peer and train else None
    gen_by_precision = {p: run_worker("generate-ours", args, precision=p) for p in ["auto", *precisions, "int8"]}
    gen_ours = gen_by_precision["auto"]
    gen_theirs = run_worker("generate-peer", args, args.peer_python) if peer else None
    steps = run_worker("steps-ours", args)
    first_char = run_worker("first-char", args)

    if train:
        print(
            f"\nTraining, tutorial model, batch 64 x 100, {args.steps} timed steps after {args.warmup} warm-up (median):"
        )
        print(
            f"{'':26}{'ms/step':>9}{'(min)':>8}{'vs peer':>9}{'loss@' + str(args.warmup + args.steps):>9}{'peak RSS':>10}"
        )
    for name, r in [*[(f"charrnn {p}", ours[p]) for p in precisions], ("tutorial (TF/Keras)", theirs)] if train else []:
        if r is None:
            print(f"{name:26}{'skipped' if name.startswith('tutorial') else 'failed':>9}")
            continue
        ratio = f"{theirs['ms_per_step'] / r['ms_per_step']:.2f}x" if theirs else "-"
        print(
            f"{name:26}{r['ms_per_step']:9.0f}{r['ms_min']:8.0f}{ratio:>9}{r['running_loss']:9.3f}{r['peak_rss_mb']:8.0f} MB"
        )
    print(f"\nGeneration, {args.chars} characters after 'ROMEO:', model loaded (median of {args.repeats}):")
    print(f"{'':26}{'batch 1 s':>10}{'batch 5 s':>10}{'batch 64 chars/s':>18}{'peak RSS':>10}")
    for name, r in [
        *((f"charrnn ({p})", gen_by_precision[p]) for p in gen_by_precision),
        ("tutorial OneStep (TF)", gen_theirs),
    ]:
        if r is None:
            print(f"{name:26}{'skipped' if name.startswith('tutorial') else 'failed':>10}")
            continue
        print(
            f"{name:26}{r['b1']['seconds']:10.3f}{r['b5']['seconds']:10.3f}{r['b64']['chars_per_s']:18,.0f}{r['peak_rss_mb']:8.0f} MB"
        )
    if gen_ours and gen_theirs:
        print(
            f"{'speed-up':26}{gen_theirs['b1']['seconds'] / gen_ours['b1']['seconds']:9.1f}x"
            f"{gen_theirs['b5']['seconds'] / gen_ours['b5']['seconds']:9.1f}x"
            f"{gen_ours['b64']['chars_per_s'] / gen_theirs['b64']['chars_per_s']:17.1f}x"
        )
    if gen_ours:
        print(
            "charrnn generation precision by batch: "
            + ", ".join(f"{b[1:]}: {gen_ours[b]['precision']}" for b in ("b1", "b5", "b64"))
        )
    if steps:
        print("\nOne model step (Stepper, what generation runs), microseconds (median):")
        print(f"{'batch':10}" + "".join(f"{b:>9}" for b in STEP_BATCHES))
        measured = [p for p in ("fp32", "bf16", "int8") if f"{p}-b1" in steps]
        for p in measured:
            print(f"{p:10}" + "".join(f"{steps[f'{p}-b{b}']:9.0f}" for b in STEP_BATCHES))
        print(f"{'auto':10}" + "".join(f"{steps['auto'][f'b{b}']:>9}" for b in STEP_BATCHES))
        fastest = {b: min(measured, key=lambda p: steps[f"{p}-b{b}"]) for b in STEP_BATCHES}
        print("fastest: " + ", ".join(f"batch {b} {p}" for b, p in fastest.items()))
        wrong = [b for b in STEP_BATCHES if steps["auto"][f"b{b}"] != fastest[b]]
        print(f"auto picks a slower one at batch: {wrong or 'none'}")
    if first_char:
        print(
            f"\nTime to first generated character of `charrnn generate` (process start, import, load, prime): "
            f"{first_char['seconds']:.2f} s (median of {args.repeats})"
        )
    if gen_ours:
        b1, b64 = gen_ours["b1"]["seconds"], gen_ours["b64"]["chars_per_s"]
        print("\nTargets:")
        if gen_theirs:
            print(f"  batch 1, 1000 chars >= 10x the tutorial's OneStep: {gen_theirs['b1']['seconds'] / b1:.1f}x")
        print(f"  batch 1, 1000 chars <= 0.10 s: {b1:.3f} s")
        print(f"  batch 64 >= 100,000 chars/s: {b64:,.0f}")
    versions = [
        f"charrnn: {next(iter(ours.values()))['versions'] if any(ours.values()) else 'training skipped'}, "
        f"{next(iter(ours.values()))['threads'] if any(ours.values()) else '?'} threads, "
        f"fused kernels {'on' if any(r and r['fused_kernels'] for r in ours.values()) else 'off'}"
    ]
    if theirs:
        versions.append(f"peer: {theirs['versions']}, {theirs['parameters']:,} parameters (its vocabulary adds [UNK])")
    elif peer:
        version = subprocess.run(
            [args.peer_python, "-c", "import tensorflow as tf; print(tf.__version__)"], capture_output=True, text=True
        ).stdout.strip()
        versions.append(f"peer: TensorFlow {version} ({args.peer_python})")
    elif not args.skip_peer:
        versions.append("peer: skipped (pip install -e .[bench] to install tensorflow-cpu)")
    print("\n" + "\n".join(versions))

    if args.learning_check:
        print("\nLearning check: one epoch of the default recipe (10% validation), same seed:")
        results = {p: run_worker("learning", args, precision=p) for p in precisions}
        for p, r in results.items():
            if r:
                print(
                    f"  {p}: train {r['train_loss']:.4f}, val {r['val_loss']:.4f}, {r['ms_per_step']:.0f} ms/step, "
                    f"{r['seconds']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MB"
                )
        if all(results.values()) and len(results) == 2:
            print(
                f"  |val bf16 - val fp32| = {abs(results['bf16']['val_loss'] - results['fp32']['val_loss']):.4f} (target <= 0.02)"
            )


if __name__ == "__main__":
    main()
