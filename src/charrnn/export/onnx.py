"""Export a run as a one-step ONNX generator that runs anywhere ONNX Runtime does, without PyTorch.

The graph is written directly with ONNX's own GRU / LSTM / RNN operators (not traced), so it is
small, exact and independent of torch.onnx's exporter versions:

    inputs   ids (batch, time) int64, state (layers * states, batch, hidden) float32
    outputs  logits (batch, vocab) float32 for the character after the last input, new_state

Batch and time are dynamic: prime with a whole prompt, then feed one character at a time. The state
layout is the PyTorch model's (LSTM: h of every layer, then c of every layer). Beside model.onnx go
vocab.json and export.json (format version, architecture, sampling defaults, training metrics, the
SHA-256 of model.onnx and of the vocabulary). A run with NaN or infinite weights is refused (by load_run)
before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from charrnn import __version__
from charrnn.errors import CharRNNError, WriteError
from charrnn.model.weights import load_run
from charrnn.storage.files import atomic_write_bytes, atomic_write_text
from charrnn.storage.run import read_metrics

if TYPE_CHECKING:
    import onnx

EXPORT_FORMAT_VERSION = 1
OPSET = 17
MODEL_FILE, VOCAB_FILE, META_FILE = "model.onnx", "vocab.json", "export.json"

# Gate blocks: PyTorch's order -> ONNX's order (ONNX GRU is z, r, h; LSTM is i, o, f, c).
_GATE_ORDER = {"gru": [1, 0, 2], "lstm": [0, 3, 1, 2], "rnn": [0]}
_OP = {"gru": "GRU", "lstm": "LSTM", "rnn": "RNN"}


def _reorder(weight: np.ndarray, cell: str) -> np.ndarray:
    blocks = np.split(weight, len(_GATE_ORDER[cell]), axis=0)
    return np.concatenate([blocks[i] for i in _GATE_ORDER[cell]], axis=0)


def build_graph(model) -> onnx.ModelProto:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg = model.config
    layers, hidden, cell = cfg.num_layers, cfg.hidden_size, cfg.cell
    weights = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
    inits = [
        numpy_helper.from_array(weights["embedding.weight"], "embedding"),
        numpy_helper.from_array(weights["dense.weight"], "dense_weight"),
        numpy_helper.from_array(weights["dense.bias"], "dense_bias"),
    ]

    def const(name, values):
        inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))

    const("axis0", [0])
    const("axis1", [1])
    nodes = [
        helper.make_node("Gather", ["embedding", "ids"], ["embedded"]),  # (batch, time, embedding)
        helper.make_node("Transpose", ["embedded"], ["x0"], perm=[1, 0, 2]),
    ]  # (time, batch, embedding)
    finals_h, finals_c = [], []
    for layer in range(layers):
        for kind in ("ih", "hh"):
            w = _reorder(weights[f"rnn.weight_{kind}_l{layer}"], cell)[None]
            inits.append(numpy_helper.from_array(w, f"{'W' if kind == 'ih' else 'R'}{layer}"))
        bias = np.concatenate(
            [_reorder(weights[f"rnn.bias_ih_l{layer}"], cell), _reorder(weights[f"rnn.bias_hh_l{layer}"], cell)]
        )[None]
        inits.append(numpy_helper.from_array(bias, f"B{layer}"))
        const(f"h_start{layer}", [layer])
        const(f"h_end{layer}", [layer + 1])
        nodes.append(helper.make_node("Slice", ["state", f"h_start{layer}", f"h_end{layer}", "axis0"], [f"h0_{layer}"]))
        inputs = [f"x{layer}", f"W{layer}", f"R{layer}", f"B{layer}", "", f"h0_{layer}"]
        outputs = [f"y{layer}", f"h{layer}"]
        attributes: dict[str, Any] = {"hidden_size": hidden}
        if cell == "gru":
            attributes["linear_before_reset"] = 1  # PyTorch's (and Keras reset_after) formulation
        if cell == "lstm":
            const(f"c_start{layer}", [layers + layer])
            const(f"c_end{layer}", [layers + layer + 1])
            nodes.append(
                helper.make_node("Slice", ["state", f"c_start{layer}", f"c_end{layer}", "axis0"], [f"c0_{layer}"])
            )
            inputs.append(f"c0_{layer}")
            outputs.append(f"c{layer}")
            finals_c.append(f"c{layer}")
        if cell == "rnn":
            attributes["activations"] = ["Tanh"]
        nodes.append(helper.make_node(_OP[cell], inputs, outputs, **attributes))  # y: (time, 1, batch, hidden)
        nodes.append(helper.make_node("Squeeze", [f"y{layer}", "axis1"], [f"x{layer + 1}"]))
        finals_h.append(f"h{layer}")
    nodes += [
        helper.make_node("Squeeze", [f"h{layers - 1}", "axis0"], ["last"]),  # (batch, hidden)
        helper.make_node("Gemm", ["last", "dense_weight", "dense_bias"], ["logits"], transB=1),
        helper.make_node("Concat", finals_h + finals_c, ["new_state"], axis=0),
    ]
    states = layers * (2 if cell == "lstm" else 1)
    graph = helper.make_graph(
        nodes,
        "charrnn_one_step",
        inputs=[
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "time"]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [states, "batch", hidden]),
        ],
        outputs=[
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", cfg.vocab_size]),
            helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [states, "batch", hidden]),
        ],
        initializer=inits,
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="charrnn", producer_version=__version__
    )
    onnx_model.ir_version = 8  # readable by every ONNX Runtime that knows opset 17
    onnx.checker.check_model(onnx_model)
    return onnx_model


def verify(model, onnx_bytes: bytes, trials: int = 3) -> float:
    """Largest |logit difference| between ONNX Runtime and PyTorch (fp32) on random ids and states."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for trial in range(trials):
        batch, steps = 1 + 2 * trial, 1 + 7 * trial
        ids = torch.randint(0, model.config.vocab_size, (batch, steps), generator=generator)
        state = torch.randn(model.initial_state(batch).shape, generator=generator) * 0.5
        with torch.no_grad():
            logits, new_state = model(ids, state, dtype=torch.float32)
        got_logits, got_state = session.run(None, {"ids": ids.numpy(), "state": state.numpy()})
        worst = max(
            worst,
            float(np.abs(got_logits - logits[:, -1].numpy()).max()),
            float(np.abs(got_state - new_state.numpy()).max()),
        )
    return worst


def export(
    run_dir: str | Path, out: str | Path | None = None, checkpoint: str | None = None, fmt: str = "onnx"
) -> dict[str, Any]:
    """Write the export directory; returns its export.json contents (with the parity check's result)."""
    if fmt != "onnx":
        raise CharRNNError(f"unknown export format {fmt!r}; the format is onnx")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CharRNNError("export needs the onnx and onnxruntime packages: pip install 'charrnn[export]'") from None
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "onnx"
    if out.exists() and any(out.iterdir()) and not (out / META_FILE).is_file():
        raise CharRNNError(f"{out} exists and is not a charrnn export; choose another --out")
    model, vocab, model_config, train_config, corpus = load_run(run_dir, checkpoint)
    onnx_bytes = build_graph(model).SerializeToString()
    worst = verify(model, onnx_bytes)
    if not worst < 1e-4:
        raise CharRNNError(
            f"the ONNX graph does not match PyTorch (max logit difference {worst:.2e}); please report this"
        )
    epochs = [m for m in read_metrics(run_dir) if m.get("kind") == "epoch"]
    meta = {
        "format_version": EXPORT_FORMAT_VERSION,
        "charrnn_version": __version__,
        "format": "onnx",
        "opset": OPSET,
        "model": {
            k: getattr(model_config, k) for k in ("vocab_size", "embedding_size", "hidden_size", "num_layers", "cell")
        },
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "state_shape": [int(model.initial_state(1).shape[0]), "batch", model_config.hidden_size],
        "inputs": {"ids": "int64 (batch, time)", "state": "float32 (layers * states, batch, hidden); LSTM: h then c"},
        "outputs": {"logits": "float32 (batch, vocab), next character", "new_state": "like state"},
        "sampling": {
            "temperature": 1.0,
            "top_k": 0,
            "top_p": 1.0,
            "empty_prompt_primers": ["\n", " ", "."],
            "rng": "numpy PCG64 seeded with the seed; one uniform per row per step, inverted through the CDF",
        },
        "source": {
            "run": str(run_dir.resolve()),
            "checkpoint": checkpoint or "best if present",
            "corpus": corpus,
            "last_epoch": epochs[-1] if epochs else None,
        },
        "verified_max_abs_diff": worst,
        "model_sha256": hashlib.sha256(onnx_bytes).hexdigest(),  # checked when the export is loaded
        "vocab_sha256": vocab.sha256,  # likewise: a vocab.json swapped for another of its size is refused
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(out, exc) from None
    (out / META_FILE).unlink(missing_ok=True)  # re-exporting: the directory is incomplete until the end
    atomic_write_bytes(out / MODEL_FILE, onnx_bytes)
    vocab.save(out / VOCAB_FILE)
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")  # last: marks it complete
    return meta
