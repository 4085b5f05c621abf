"""Start-up: how long a user waits for `charrnn generate RUN`, with PyTorch and without it.

    python bench/startup.py runs/shakespeare                  # 10 fresh processes per figure
    python bench/startup.py runs/shakespeare --repeats 20 --precision fp32

For a GRU on the CPU, `charrnn generate` and `charrnn.load` step the C kernels without importing PyTorch
(generation/runs.py); CHARRNN_TORCH_GENERATION=1 makes them load the PyTorch model instead. Measured,
each as the median of --repeats fresh processes after one warm-up run (which builds the step kernels
into the cache if needed, and brings the files into the page cache):

- generate: process start to exit of `charrnn generate RUN --prompt ROMEO: --length 1000 --seed 0`;
- first character: process start to the first generated character on stdout;
- load: `python -c "import charrnn; charrnn.load(RUN)"`.

Run it on a quiet machine: other work on the cores moves these figures by tens of percent.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PROMPT = "ROMEO:"
PATHS = {"without PyTorch": {}, "with PyTorch": {"CHARRNN_TORCH_GENERATION": "1"}}


def environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CHARRNN_TORCH_GENERATION"}
    return {**env, "PYTHONPATH": str(ROOT / "src"), **extra}


def median_seconds(once, repeats: int) -> tuple[float, float]:
    """(median, fastest) of `repeats` calls of `once()`, which returns the seconds it measured."""
    once()  # warm-up: kernels built, files cached
    times = [once() for _ in range(repeats)]
    return statistics.median(times), min(times)


def whole(command: list[str], env: dict[str, str]):
    def once() -> float:
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started

    return once


def first_character(command: list[str], env: dict[str, str]):
    def once() -> float:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        process.stdout.read(len(PROMPT.encode()) + 1)  # the prompt, then the first generated character
        seconds = time.perf_counter() - started
        process.stdout.read()
        if process.wait():
            sys.exit(f"{' '.join(command)} failed")
        return seconds

    return once


def imports_torch(command: list[str], env: dict[str, str]) -> bool:
    result = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]], env=env, capture_output=True, text=True, check=True
    )
    return any(line.rsplit("|", 1)[-1].strip().split(".")[0] == "torch" for line in result.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained run directory (a GRU, for the path without PyTorch)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--precision", default="auto", help="passed to both paths (default auto)")
    args = parser.parse_args()

    from charrnn.kernels.cpu import cpu_model

    generate = [sys.executable, "-m", "charrnn", "generate", args.run, "--prompt", PROMPT]
    generate += ["--length", str(args.length), "--seed", "0", "--precision", args.precision]
    load = [sys.executable, "-c", f"import charrnn; charrnn.load({args.run!r}, precision={args.precision!r})"]
    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs), Python {platform.python_version()}")
    print(f"generate: {' '.join(generate[1:])}")
    print(f"load:     {' '.join(load[1:])}")
    print(f"median (fastest) of {args.repeats} fresh processes each, seconds\n")
    texts = {}
    print(f"{'':<18}{'torch imported':>16}{'generate':>18}{'first character':>18}{'load':>18}")
    for name, extra in PATHS.items():
        env = environment(extra)
        texts[name] = subprocess.run(generate, env=env, capture_output=True, text=True, check=True).stdout
        figures = [
            median_seconds(whole(generate, env), args.repeats),
            median_seconds(first_character(generate, env), args.repeats),
            median_seconds(whole(load, env), args.repeats),
        ]
        shown = "".join(f"{f'{median:.3f} ({fastest:.3f})':>18}" for median, fastest in figures)
        print(f"{name:<18}{'yes' if imports_torch(generate, env) else 'no':>16}{shown}")
    if len(set(texts.values())) != 1:
        sys.exit("the two paths wrote different texts")
    print("\nboth paths wrote the same text")


if __name__ == "__main__":
    main()
