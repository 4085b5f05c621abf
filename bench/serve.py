"""Continuous batching under load: `charrnn serve` with 1, 4, 16 and 64 concurrent streaming clients.

    python bench/serve.py                          # the tutorial's shapes (embedding 256, GRU 1024)
    python bench/serve.py --run runs/shakespeare   # a trained run instead of a fresh one
    python bench/serve.py --clients 1,4 --hidden 128 --chars 200   # a quick check

Starts `charrnn serve` on 127.0.0.1 (a free port) in its own process, on a run made here in seconds (the
tutorial's shapes on Shakespeare's vocabulary after one training step: speed does not depend on the
weights), then for each client count runs that many streaming POST /v1/generate requests of --chars
characters at once, each with its own seed, from this one asyncio process (a light load generator: it
shares the cores with the server). Load comes only from 127.0.0.1, and every loop is bounded.

Reported per client count: aggregate throughput (generated characters / wall time of the round), the
median over clients of the time to first character (from sending the request to the first generated
character), and p50/p99 per-character latency: a chunk of k characters arriving t seconds after the
previous one counts as k characters of t/k each (the server hands a slow reader larger chunks). Then the
two goals: with 16 clients, throughput >= 8x one client's, and time to first character <= 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from charrnn.kernels.cpu import cpu_model  # noqa: E402  (torch-free)


def make_run(directory: Path, embedding: int, hidden: int, data_dir: str | None) -> Path:
    """A run with the given shapes on Shakespeare after one short training step (a few seconds)."""
    run = directory / "run"
    command = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        "--run",
        str(run),
        "--text",
        "shakespeare",
        "--max-steps",
        "1",
        "--batch-size",
        "8",
        "--seq-len",
        "50",
        "--eval-chars",
        "2000",
        "--embedding",
        str(embedding),
        "--hidden",
        str(hidden),
    ] + (["--data-dir", data_dir] if data_dir else [])
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    if done.returncode:
        raise SystemExit(f"could not make a run ({shlex.join(command)}):\n{done.stderr.strip()}")
    return run


def start_server(run: Path, args) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "charrnn",
        "serve",
        str(run),
        "--port",
        "0",
        "--max-length",
        str(args.chars),
        "--max-batch",
        str(args.max_batch),
        "--precision",
        args.precision,
    ] + (["--threads", str(args.threads)] if args.threads else [])
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
        if found:
            return server, found.group(1)
        if not line and server.poll() is not None:
            break
    server.kill()
    raise SystemExit(f"the server did not start: {' '.join(command)}")


async def one_client(http: httpx.AsyncClient, url: str, chars: int, seed: int) -> dict:
    """One streaming request: when it was sent, each chunk's arrival time and size."""
    body = {"prompt": "ROMEO:", "length": chars, "seed": seed, "stream": True}
    sent, arrivals = time.perf_counter(), []
    async with http.stream("POST", f"{url}/v1/generate", json=body) as response:
        response.raise_for_status()
        first = True
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if first:  # the prompt, not generated
                first = False
                continue
            texts = json.loads(line[6:]).get("texts")
            if texts:
                arrivals.append((time.perf_counter(), len(texts[0])))
    return {"sent": sent, "arrivals": arrivals}


async def one_round(url: str, clients: int, chars: int, timeout: float) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        started = time.perf_counter()
        results = await asyncio.wait_for(
            asyncio.gather(*(one_client(http, url, chars, seed) for seed in range(clients))), timeout
        )
        wall = time.perf_counter() - started
    total = sum(n for r in results for _, n in r["arrivals"])
    firsts, per_char = [], []
    for r in results:
        firsts.append(r["arrivals"][0][0] - r["sent"])
        previous = r["arrivals"][0][0]
        for at, n in r["arrivals"][1:]:
            per_char += [(at - previous) / n] * n
            previous = at
    per_char.sort()

    def pick(q):
        return per_char[min(len(per_char) - 1, int(q * len(per_char)))] if per_char else float("nan")

    return {
        "clients": clients,
        "chars_per_s": total / wall,
        "ttfc_s": statistics.median(firsts),
        "p50_ms": pick(0.50) * 1e3,
        "p99_ms": pick(0.99) * 1e3,
        "chars": total,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="serve this run or export (default: a fresh tutorial-size run)")
    parser.add_argument("--data-dir", help="where shakespeare.txt is (else charrnn's cache, or CHARRNN_DATA_DIR)")
    parser.add_argument("--embedding", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--clients", default="1,4,16,64", help="comma-separated client counts")
    parser.add_argument("--chars", type=int, default=500, help="characters per client")
    parser.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch")
    parser.add_argument("--threads", type=int, help="the server's --threads (default: its default, the cores)")
    parser.add_argument(
        "--precision", default="auto", help="the server's --precision: auto (default), fp32, bf16, int8"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per round")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores")
    print("reproduce: python bench/serve.py " + shlex.join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or make_run(Path(scratch), args.embedding, args.hidden, args.data_dir)
        server, url = start_server(run, args)
        try:
            info = httpx.get(f"{url}/health", timeout=30).json()
            print(
                f"serving {run} at {url}: precision {info['precision']}, --max-batch {info['max_batch']}, "
                f"{args.chars} characters per client"
            )
            asyncio.run(
                one_round(url, 1, min(50, args.chars), args.timeout)
            )  # warm-up: weights prepared, kernels loaded
            rows = []
            print(f"{'clients':>7} {'chars/s':>10} {'first char (median)':>20} {'p50/char':>10} {'p99/char':>10}")
            for clients in counts:
                row = asyncio.run(one_round(url, clients, args.chars, args.timeout))
                rows.append(row)
                print(
                    f"{clients:>7} {row['chars_per_s']:>10,.0f} {row['ttfc_s'] * 1e3:>17.1f} ms "
                    f"{row['p50_ms']:>7.2f} ms {row['p99_ms']:>7.2f} ms"
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
    by = {row["clients"]: row for row in rows}
    if 1 in by and 16 in by:
        speedup = by[16]["chars_per_s"] / by[1]["chars_per_s"]
        slower = by[16]["ttfc_s"] / by[1]["ttfc_s"]
        print(
            f"target: 16 clients' throughput >= 8x one client's: {speedup:.1f}x ({'met' if speedup >= 8 else 'MISSED'})"
        )
        print(
            f"target: 16 clients' first character <= 2x one client's: {slower:.1f}x ({'met' if slower <= 2 else 'MISSED'})"
        )


if __name__ == "__main__":
    main()
