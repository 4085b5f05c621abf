"""Generate from an exported directory with only numpy and onnxruntime: no PyTorch anywhere on this path.

    from charrnn import runtime
    model = runtime.load("runs/shakespeare/onnx")
    print(model.generate("ROMEO:", length=200, seed=1)[0])

Same interface and sampling as `charrnn.load(RUN)` (both use charrnn.decoding), so the same seed gives
the same text from either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import decoding
from .errors import CharRNNError
from .vocab import Vocab

EXPORT_FORMAT_VERSION = 1  # the export.json versions this runtime reads (see export.py)


def is_export(path: str | Path) -> bool:
    return (Path(path) / "export.json").is_file()


class OnnxBackend:
    """decoding.Backend over an ONNX Runtime session of the exported one-step graph."""

    def __init__(self, session, state_layers: int, hidden: int):
        self.session, self.state_layers, self.hidden = session, state_layers, hidden

    def _run(self, ids: np.ndarray, state: np.ndarray):
        return tuple(self.session.run(None, {"ids": ids, "state": state}))  # (logits, new_state)

    def prime(self, prompts: list[np.ndarray], num_samples: int):
        logits, states = [], []
        for ids in prompts:
            zeros = np.zeros((self.state_layers, 1, self.hidden), dtype=np.float32)
            out, state = self._run(ids.astype(np.int64)[None], zeros)
            logits.append(np.repeat(out, num_samples, axis=0))
            states.append(np.repeat(state, num_samples, axis=1))
        return np.concatenate(logits), np.ascontiguousarray(np.concatenate(states, axis=1))

    def step(self, ids: np.ndarray, state: np.ndarray):
        return self._run(ids.astype(np.int64)[:, None], state)


class ExportedModel:
    """An exported model: generate / stream / describe, like charrnn.CharModel."""

    def __init__(self, directory: str | Path, threads: int | None = None):
        directory = Path(directory)
        try:
            meta = json.loads((directory / "export.json").read_text(encoding="utf-8"))
        except OSError:
            raise CharRNNError(f"{directory} is not a charrnn export (no export.json); create one with `charrnn export RUN`") from None
        except ValueError as exc:
            raise CharRNNError(f"{directory}/export.json is not valid JSON: {exc}") from None
        if meta.get("format_version") != EXPORT_FORMAT_VERSION:
            raise CharRNNError(f"{directory}: export format version {meta.get('format_version')!r} is not supported "
                               f"(this charrnn reads {EXPORT_FORMAT_VERSION}); re-export or upgrade charrnn")
        try:
            import onnxruntime as ort
        except ImportError:
            raise CharRNNError("running an export needs onnxruntime: pip install onnxruntime") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.vocab = Vocab.load(directory / "vocab.json")
        self.meta, self.directory = meta, directory
        self.state_layers, self.hidden = int(meta["state_shape"][0]), int(meta["state_shape"][2])

    def describe(self) -> dict[str, Any]:
        model = self.meta["model"]
        return {**model, "parameters": self.meta["parameters"], "corpus": self.meta["source"].get("corpus", {}),
                "last_epoch": self.meta["source"].get("last_epoch"), "backend": "onnxruntime"}

    def backend(self, batch: int) -> OnnxBackend:
        return OnnxBackend(self.session, self.state_layers, self.hidden)

    def stream(self, prompt: str | Sequence[str] = "", length: int = 1000, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, num_samples: int = 1, drop_unknown: bool = False) -> Iterator[list[str]]:
        return decoding.stream(self.backend, self.vocab, prompt, length, temperature, top_k, top_p, seed, num_samples, drop_unknown)

    def generate(self, prompt: str | Sequence[str] = "", length: int = 1000, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, num_samples: int = 1, drop_unknown: bool = False) -> list[str]:
        return decoding.join(self.stream(prompt, length, temperature, top_k, top_p, seed, num_samples, drop_unknown))


def load(directory: str | Path, threads: int | None = None) -> ExportedModel:
    return ExportedModel(directory, threads)
