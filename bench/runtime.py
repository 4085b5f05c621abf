"""Exported ONNX generator vs the PyTorch model: export size, load time and generation time.

    python bench/runtime.py runs/shakespeare          # exports to a temporary folder, then measures

Load is timed twice: warm (in this process, libraries already imported) and cold (a fresh process that
imports its runtime and loads the model: what `charrnn generate` pays). Generation is 1000 characters
after "ROMEO:" at batch 1 (and 5), the median of repeated runs with the model loaded.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cold_load(code: str, repeats: int = 3) -> float:
    def once():
        subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(ROOT / "src")})

    return median_time(once, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained run directory")
    parser.add_argument("--chars", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from charrnn import runtime
    from charrnn.export.onnx import export
    from charrnn.generation.torch_model import load as torch_load

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "onnx"
        started = time.perf_counter()
        meta = export(args.run, out)
        export_seconds = time.perf_counter() - started
        size = {f.name: f.stat().st_size for f in out.iterdir()}
        run_files = sum(p.stat().st_size for p in Path(args.run).glob("*.safetensors")) / len(
            list(Path(args.run).glob("*.safetensors"))
        )
        torch_model = torch_load(args.run, precision="fp32")
        onnx_model = runtime.load(out)
        rows = {}
        for name, model, load in (
            ("PyTorch (CharModel)", torch_model, lambda: torch_load(args.run, precision="fp32")),
            ("ONNX Runtime (charrnn.runtime)", onnx_model, lambda: runtime.load(out)),
        ):
            model.generate("ROMEO:", length=20, seed=0)  # warm-up
            rows[name] = {
                "load": median_time(load, args.repeats),
                "b1": median_time(
                    lambda model=model: model.generate("ROMEO:", length=args.chars, seed=1), args.repeats
                ),
                "b5": median_time(
                    lambda model=model: model.generate("ROMEO:", length=args.chars, seed=1, num_samples=5), args.repeats
                ),
            }
        rows["PyTorch (CharModel)"]["cold"] = cold_load(
            f"from charrnn.generation.torch_model import load; load({args.run!r})"
        )
        rows["ONNX Runtime (charrnn.runtime)"]["cold"] = cold_load(
            f"from charrnn import runtime; runtime.load({str(out)!r})"
        )
        same = torch_model.generate("ROMEO:", length=300, seed=5) == onnx_model.generate("ROMEO:", length=300, seed=5)

    print(f"command: python bench/runtime.py {args.run}")
    print(
        f"model: {meta['model']['cell']} x{meta['model']['num_layers']}, hidden {meta['model']['hidden_size']}, "
        f"{meta['parameters']:,} parameters; export took {export_seconds:.1f} s, max |logit diff| vs PyTorch {meta['verified_max_abs_diff']:.1e}"
    )
    print(
        f"export size: model.onnx {size['model.onnx'] / 1e6:.1f} MB + vocab.json {size['vocab.json']} B + export.json "
        f"{size['export.json']} B (the run's weights: {run_files / 1e6:.1f} MB per checkpoint)"
    )
    print(f"{'':32}{'load warm':>10}{'load cold':>11}{f'{args.chars} chars b1':>17}{f'{args.chars} chars b5':>17}")
    for name, r in rows.items():
        print(f"{name:32}{r['load'] * 1000:8.0f}ms{r['cold']:10.2f}s{r['b1']:16.3f}s{r['b5']:16.3f}s")
    print(f"same seeded text from both: {same}")


if __name__ == "__main__":
    main()
