"""Generate from an exported directory with only numpy and onnxruntime: no PyTorch anywhere on this path.

    from charrnn import runtime
    model = runtime.load("runs/shakespeare/onnx")
    print(model.generate("ROMEO:", length=200, seed=1)[0])

Same interface and sampling as `charrnn.load(RUN)` (both run generation/loop.py), so the same seed gives
the same text from either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.generation import loop
from charrnn.storage import formats


def is_export(path: str | Path) -> bool:
    return (Path(path) / "export.json").is_file()


class OnnxBackend:
    """loop.Backend over an ONNX Runtime session of the exported one-step graph."""

    def __init__(self, session, state_layers: int, hidden: int):
        self.session, self.state_layers, self.hidden = session, state_layers, hidden

    def _run(self, ids: np.ndarray, state: np.ndarray):
        return tuple(self.session.run(None, {"ids": ids, "state": state}))  # (logits, new_state)

    def prime(self, prompts: list[np.ndarray], num_samples: int):
        shape = (self.state_layers, self.hidden)
        return loop.prime_in_pieces(prompts, num_samples, shape, lambda ids, state: self._run(ids[None], state))

    def step(self, ids: np.ndarray, state: np.ndarray):
        return self._run(ids.astype(np.int64)[:, None], state)

    precision = "fp32"  # the exported graph's

    def join(self, states: list[np.ndarray]) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate(states, axis=1))  # (states, rows, hidden) -> all rows

    def take(self, state: np.ndarray, rows: list[int]) -> np.ndarray:
        return np.ascontiguousarray(state[:, rows])


def _check_finite_weights(model_path: Path, fix: str) -> None:
    """Refuse NaN or infinite weights, which load and run but write one character forever. `charrnn export`
    refuses them too, but an export written before it did may hold them under a valid SHA-256. Reading the
    weights needs the onnx package (charrnn[export]); with ONNX Runtime alone they are not checked here."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return
    try:
        initializers = onnx.load(str(model_path), load_external_data=False).graph.initializer
    except Exception as exc:  # onnx raises protobuf's own types for a file it cannot parse
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CharRNNError(f"{model_path} cannot be read ({first[:200]}); {fix}") from None
    for initializer in initializers:
        values = numpy_helper.to_array(initializer)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise CharRNNError(
                f"{model_path}: weight {initializer.name} holds NaN or infinite values (the model it was "
                f"exported from had diverged, or the file is damaged); {fix}"
            )


class ExportedModel(loop.Generator):
    """An exported model: generate / stream / describe, like charrnn.CharModel."""

    def __init__(self, directory: str | Path, threads: int | None = None):
        directory = Path(directory)
        if not is_export(directory):
            raise CharRNNError(
                f"{directory} is not a charrnn export (no export.json); create one with `charrnn export RUN`"
            )
        fix = f"re-export it with `charrnn export RUN --out {directory}`"
        meta = formats.load(formats.ExportFile, directory / "export.json", fix)
        try:
            import onnxruntime as ort
        except ImportError:
            raise CharRNNError("running an export needs onnxruntime: pip install onnxruntime") from None
        model_path = directory / "model.onnx"
        if not model_path.is_file():
            raise CharRNNError(f"{model_path} is missing; {fix}")
        if meta.model_sha256 is not None and formats.file_sha256(model_path) != meta.model_sha256:
            raise CharRNNError(f"{model_path} is damaged (it does not match the SHA-256 in export.json); {fix}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable or invalid graphs
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CharRNNError(f"{model_path} cannot be loaded ({first[:200]}); {fix}") from None
        _check_finite_weights(model_path, fix)
        arch = meta.model
        states, hidden = meta.state_shape[0], meta.state_shape[2]
        shapes = {io.name: io.shape for io in [*self.session.get_inputs(), *self.session.get_outputs()]}
        expected = {
            "ids": ["batch", "time"],
            "state": [states, "batch", hidden],
            "logits": ["batch", arch.vocab_size],
            "new_state": [states, "batch", hidden],
        }
        if set(shapes) != set(expected) or any(
            len(shapes[k]) != len(v) or any(isinstance(want, int) and got != want for got, want in zip(shapes[k], v))
            for k, v in expected.items()
        ):
            raise CharRNNError(f"{model_path} does not match export.json (graph inputs/outputs {shapes}); {fix}")
        self.vocab = Vocab.load(directory / "vocab.json", fix)
        if len(self.vocab) != arch.vocab_size:
            raise CharRNNError(
                f"{directory}/vocab.json has {len(self.vocab)} characters but the model has {arch.vocab_size}; {fix}"
            )
        own = f"restore the export's own vocab.json, or {fix}"
        self.vocab.check_sha256(meta.vocab_sha256, directory / "vocab.json", "export.json", own)
        self.meta, self.directory = meta.model_dump(), directory
        self.state_layers, self.hidden = states, hidden

    def describe(self) -> dict[str, Any]:
        model = self.meta["model"]
        return {
            **model,
            "parameters": self.meta["parameters"],
            "corpus": self.meta["source"].get("corpus", {}),
            "last_epoch": self.meta["source"].get("last_epoch"),
            "backend": "onnxruntime",
        }

    def backend(self, batch: int) -> OnnxBackend:
        return OnnxBackend(self.session, self.state_layers, self.hidden)

    def state_values(self) -> int:
        return self.state_layers * self.hidden


def load(directory: str | Path, threads: int | None = None) -> ExportedModel:
    return ExportedModel(directory, threads)
