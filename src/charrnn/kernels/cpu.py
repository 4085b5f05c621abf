"""What this CPU can really execute, checked before PyTorch's first oneDNN call.

Why: some virtual machines advertise AMX (cpuid flags amx_tile/amx_bf16, and Linux grants the tile
state through arch_prctl) but fault on the first tile instruction: on a Firecracker VM with a Sapphire
Rapids host, a plain bf16 `torch.mm` of (16, 512) x (512, 1536) dies with SIGILL, so training and
generation in bf16 crashed. Nothing in-process can tell, so once per machine a child process runs that
product; if it dies, oneDNN is capped to AVX512-BF16 (ONEDNN_MAX_CPU_ISA, which oneDNN reads at its
first use) and bf16 still runs natively, just without AMX. The verdict is cached per CPU, kernel and
torch version, like the compiled kernels, so later runs pay one file read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
CAPPED_ISA = "AVX512_CORE_BF16"

# Large enough that oneDNN picks its AMX kernels; the packed product is what the fast GRU uses.
_PROBE = """
import torch
x = torch.ones(16, 512, dtype=torch.bfloat16)
w = torch.ones(1536, 512, dtype=torch.bfloat16)
torch.mm(x, w.t())
try:
    packed = torch.ops.mkldnn._reorder_linear_weight(w, 16)
except Exception:
    packed = None
if packed is not None:
    torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
"""

_amx_usable: bool | None = None


@functools.cache  # asked at every generation's precision choice; /proc/cpuinfo grows with the cores
def cpu_flags() -> frozenset[str]:
    """The kernel's cpuid flags (empty where /proc/cpuinfo does not exist)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name, for benchmark tables."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _verdict_path(flags: frozenset[str]) -> Path:
    from importlib.metadata import version

    from charrnn.storage.files import cache_dir

    key = hashlib.sha256(" ".join([*sorted(flags), platform.release(), version("torch")]).encode()).hexdigest()[:16]
    return cache_dir() / "cpu" / f"amx-{key}.json"


def _probe() -> bool | None:
    """True if the product ran, False if the child died of a signal (SIGILL), None if it could not tell."""
    env = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES}
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        result = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    return True if result.returncode == 0 else False if result.returncode < 0 else None


def _needs_verdict(flags: frozenset[str]) -> bool:
    # AMX advertised, and the user has not chosen oneDNN's ISA themselves.
    return "amx_tile" in flags and not any(os.environ.get(v) for v in ISA_VARIABLES)


def amx_usable() -> bool:
    """Whether AMX tile instructions run here (False where the CPU has none). Probes once per machine."""
    global _amx_usable
    if _amx_usable is None:
        flags = cpu_flags()
        if not _needs_verdict(flags):
            _amx_usable = False
            return _amx_usable
        path = _verdict_path(flags)
        try:
            _amx_usable = bool(json.loads(path.read_text())["amx_usable"])
        except (OSError, ValueError, KeyError, TypeError):
            verdict = _probe()
            # Undecided (no torch in the child, a timeout): stay safe for this process, ask again next time.
            _amx_usable = bool(verdict)
            if verdict is not None:
                from charrnn.errors import CharRNNError
                from charrnn.storage.files import atomic_write_text

                try:
                    atomic_write_text(path, json.dumps({"amx_usable": verdict, "cpu": cpu_model()}) + "\n")
                except (OSError, CharRNNError):
                    pass  # an unwritable cache only costs the probe again next time
    return _amx_usable


def guard_isa() -> None:
    """Cap oneDNN below AMX where AMX is advertised but faults. Call before the first oneDNN product."""
    if _needs_verdict(cpu_flags()) and not amx_usable():
        os.environ["ONEDNN_MAX_CPU_ISA"] = CAPPED_ISA
