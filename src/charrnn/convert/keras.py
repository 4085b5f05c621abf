"""`charrnn import`: turn a model trained by the TensorFlow tutorial into a charrnn run.

The tutorial's model is Embedding -> GRU -> Dense, subclassed from tf.keras.Model, saved as a Keras 3
`*.weights.h5` (read with h5py) or a TF checkpoint `ckpt_N.index` + `ckpt_N.data-00000-of-00001` (Keras 2,
read by tfcheckpoint.py without TensorFlow). Its vocabulary is `StringLookup(sorted(set(text)))`: id 0
is `[UNK]`, character i of the sorted list is id i + 1, and its OneStep adds -inf to the [UNK] logit
before sampling. charrnn's own vocabulary is the same sorted list without [UNK], so the import drops
[UNK]'s embedding row and output row and every id moves down by one. Softmax over the remaining
logits is exactly the tutorial's masked softmax, so sampling (and greedy text) are unchanged; only a
loss counts slightly differently (the tutorial's training loss also spent probability on [UNK]).

Keras's GRU (reset_after=True) and PyTorch's compute the same function; only the layouts differ:
Keras kernel (in, 3H) and recurrent_kernel (H, 3H) with gate columns z, r, h, bias (2, 3H) = input
and recurrent biases; PyTorch weight_ih (3H, in), weight_hh (3H, H) with gate rows r, z, n, bias_ih,
bias_hh (3H). Layer sizes come from the file.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charrnn.config import ModelConfig, TrainConfig
from charrnn.convert.tfcheckpoint import BadCheckpoint, read_checkpoint
from charrnn.data.prepare import prepare
from charrnn.errors import CharRNNError
from charrnn.model import weights as weight_files
from charrnn.model.network import CharRNN
from charrnn.storage import run as run_folder
from charrnn.storage.formats import file_sha256

NOT_TUTORIAL = "charrnn imports the TensorFlow tutorial's model (Embedding -> GRU -> Dense)"


@dataclass(frozen=True)
class TutorialWeights:
    """The tutorial model's six arrays, in Keras layout, [UNK] included."""

    embedding: np.ndarray  # (vocab + 1, E)
    kernel: np.ndarray  # (E, 3H), gate columns z, r, h
    recurrent_kernel: np.ndarray  # (H, 3H)
    bias: np.ndarray  # (2, 3H): input bias, recurrent bias
    dense_kernel: np.ndarray  # (H, vocab + 1)
    dense_bias: np.ndarray  # (vocab + 1,)


def find_model(path: Path) -> tuple[str, Path]:
    """("h5" | "tf", file or checkpoint prefix) for PATH: a .h5 file, a checkpoint prefix, or a folder
    holding them (its latest checkpoint: the one its `checkpoint` file names, else the newest)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".h5":
        return "h5", path
    for suffix in (".index", ".data-00000-of-00001"):
        if path.name.endswith(suffix) and path.is_file():
            path = path.with_name(path.name[: -len(suffix)])
    if path.with_name(path.name + ".index").is_file():
        return "tf", path
    if path.is_dir():
        named = path / "checkpoint"  # tf.train.CheckpointManager / Keras 2's record of the latest save
        if named.is_file():
            match = re.search(r'^model_checkpoint_path:\s*"(.+)"', named.read_text("utf-8", "replace"), re.M)
            if match and (path / (match.group(1) + ".index")).is_file():
                return "tf", path / match.group(1)
        found = [("tf", p.with_suffix("")) for p in path.glob("*.index")] + [("h5", p) for p in path.glob("*.h5")]
        if found:
            return max(
                found,
                key=lambda kp: (kp[1].with_name(kp[1].name + ".index") if kp[0] == "tf" else kp[1]).stat().st_mtime,
            )
        raise CharRNNError(
            f"{path} holds no TensorFlow model (*.weights.h5, or ckpt_N.index with its .data file); "
            "give the file or checkpoint prefix"
        )
    if not path.exists():
        raise CharRNNError(
            f"{path} does not exist; give a .weights.h5 file, a checkpoint prefix "
            "(training_checkpoints/ckpt_10) or the folder holding them"
        )
    raise CharRNNError(f"{path} is not a Keras .weights.h5 file or a TF checkpoint; {NOT_TUTORIAL}")


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    try:
        import h5py
    except ImportError:
        raise CharRNNError(
            "reading a .weights.h5 file needs h5py: pip install 'charrnn[import]' (or pip install h5py)"
        ) from None
    arrays: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(
                lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
    except OSError as exc:
        raise CharRNNError(f"{path} is not a readable HDF5 file ({str(exc).splitlines()[0]}); {NOT_TUTORIAL}") from None
    return {name: a for name, a in arrays.items() if isinstance(a, np.ndarray) and a.dtype.kind == "f"}


def _is_optimizer(name: str) -> bool:
    """Optimizer slots and counters: saved beside the model's variables, not part of it."""
    return "OPTIMIZER_SLOT" in name or name.startswith(("optimizer", "save_counter"))


def _check_finite(arrays: dict[str, np.ndarray], source: Path) -> None:
    """Refuse NaN or infinite weights (a diverged training): imported, they would give a model that writes
    one character forever. The optimizer's state does not matter, so it is not checked."""
    for name, array in arrays.items():
        if not _is_optimizer(name) and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise CharRNNError(
                f"{source}: weight {name} holds NaN or infinite values (the training diverged); "
                "import a checkpoint saved before it diverged"
            )


def _layers(arrays: dict[str, np.ndarray]) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Variables grouped by their layer, optimizer slots and counters left out. Keras 3 files name them
    layers/<layer>/[cell/]vars/<i>; Keras 2 checkpoints <layer>/[cell/]<name>/.ATTRIBUTES/VARIABLE_VALUE."""
    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name in sorted(arrays, key=lambda n: [int(p) if p.isdigit() else p for p in n.split("/")]):
        if _is_optimizer(name):
            continue
        parts = [
            p for p in name.replace("/.ATTRIBUTES/VARIABLE_VALUE", "").split("/") if p not in ("layers", "vars", "cell")
        ]
        if len(parts) < 2:
            continue
        groups.setdefault("/".join(parts[:-1]), []).append((parts[-1].split(":")[0], arrays[name]))
    return groups


def tutorial_weights(arrays: dict[str, np.ndarray], source: Path) -> TutorialWeights:
    """Pick out the tutorial's layers by their variables: one with `embeddings` (or a single 2-D
    variable), one with three (the GRU: kernel, recurrent kernel, bias (2, 3H)), one dense (kernel, bias)."""
    _check_finite(arrays, source)
    found: dict[str, list[np.ndarray]] = {}
    for layer, variables in _layers(arrays).items():
        names = [n for n, _ in variables]
        values = [v for _, v in variables]
        if names in (["embeddings"], ["0"]) and values[0].ndim == 2:
            found.setdefault("embedding", values)
        elif sorted(names) in (["bias", "kernel", "recurrent_kernel"], ["0", "1", "2"]):
            by_name = dict(variables)
            values = [by_name[n] for n in ("kernel", "recurrent_kernel", "bias")] if "kernel" in by_name else values
            if "gru" in found or values[2].shape[:1] != (2,):
                raise CharRNNError(
                    f"{source}: found a recurrent layer '{layer}' that is not the tutorial's single GRU "
                    f"(reset_after=True); {NOT_TUTORIAL}"
                )
            found["gru"] = values
        elif sorted(names) in (["bias", "kernel"], ["0", "1"]):
            by_name = dict(variables)
            found.setdefault("dense", [by_name[n] for n in ("kernel", "bias")] if "kernel" in by_name else values)
    missing = [k for k in ("embedding", "gru", "dense") if k not in found]
    if missing:
        raise CharRNNError(f"{source} has no {' or '.join(missing)} layer; {NOT_TUTORIAL}")
    weights = TutorialWeights(found["embedding"][0], *found["gru"], *found["dense"])
    rows, width = weights.embedding.shape
    hidden = weights.recurrent_kernel.shape[0]
    expected = {
        "kernel": (width, 3 * hidden),
        "recurrent_kernel": (hidden, 3 * hidden),
        "bias": (2, 3 * hidden),
        "dense_kernel": (hidden, rows),
        "dense_bias": (rows,),
    }
    for name, shape in expected.items():
        if getattr(weights, name).shape != shape:
            raise CharRNNError(
                f"{source}: {name} has shape {getattr(weights, name).shape}, expected {shape} for "
                f"embedding ({rows}, {width}) and GRU {hidden}; {NOT_TUTORIAL}"
            )
    return weights


def _keras_to_torch_gates(array: np.ndarray, hidden: int) -> np.ndarray:
    # (..., 3H) with Keras gate blocks z, r, h -> PyTorch's r, z, n.
    z, r, h = (array[..., i * hidden : (i + 1) * hidden] for i in range(3))
    return np.concatenate([r, z, h], axis=-1)


def state_dict(weights: TutorialWeights) -> dict[str, torch.Tensor]:
    """CharRNN's parameters from the tutorial's, [UNK] (row / column 0) dropped."""
    hidden = weights.recurrent_kernel.shape[0]
    tensors = {
        "embedding.weight": weights.embedding[1:],  # (vocab, E)
        "rnn.weight_ih_l0": _keras_to_torch_gates(weights.kernel, hidden).T,  # (3H, E)
        "rnn.weight_hh_l0": _keras_to_torch_gates(weights.recurrent_kernel, hidden).T,  # (3H, H)
        "rnn.bias_ih_l0": _keras_to_torch_gates(weights.bias[0], hidden),  # (3H,)
        "rnn.bias_hh_l0": _keras_to_torch_gates(weights.bias[1], hidden),
        "dense.weight": weights.dense_kernel[:, 1:].T,  # (vocab, H)
        "dense.bias": weights.dense_bias[1:],  # (vocab,)
    }
    return {name: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for name, a in tensors.items()}


def read_model(path: Path) -> tuple[TutorialWeights, dict]:
    """The tutorial weights in PATH and a record of where they came from (for config.json)."""
    kind, found = find_model(path)
    if kind == "h5":
        arrays, files = _read_h5(found), [found]
    else:
        try:
            arrays = read_checkpoint(found)
        except BadCheckpoint as exc:
            raise CharRNNError(f"{found}.index: {exc}; {NOT_TUTORIAL}") from None
        except OSError as exc:
            raise CharRNNError(f"cannot read {found}: {exc.strerror or exc}") from None
        files = sorted(found.parent.glob(found.name + ".*"))
    weights = tutorial_weights(arrays, found)
    origin = {
        "kind": "tensorflow",
        "format": "keras3-weights-h5" if kind == "h5" else "tf-checkpoint",
        "path": str(found.absolute()),
        "files_sha256": {f.name: file_sha256(f) for f in files},
    }
    return weights, origin


def import_tutorial(
    path: str | Path, text: str, run: str | Path, skip_chars: int = 0, encoding: str = "utf-8", data_dir=None
) -> Path:
    """Write a new run directory `run` holding the tutorial model at `path`, whose corpus is `text`."""
    run = Path(run)
    run_folder.check_new_run_dir(run)
    weights, origin = read_model(Path(path))
    if text and Path(text).expanduser().exists():
        text = str(Path(text).expanduser().absolute())
    config = TrainConfig(text=text, encoding=encoding, skip_chars=skip_chars, val_fraction=0.0)
    corpus = prepare(config.text, encoding=encoding, skip_chars=skip_chars, data_dir=data_dir)
    rows = weights.embedding.shape[0]
    if rows != len(corpus.vocab) + 1:
        raise CharRNNError(
            f"{corpus.source} has {len(corpus.vocab)} distinct characters ({len(corpus.vocab) + 1} with [UNK]) "
            f"but the model has {rows}: give the text it was trained on (with the same --skip-chars)"
        )
    model_config = ModelConfig(
        vocab_size=len(corpus.vocab),
        embedding_size=weights.embedding.shape[1],
        hidden_size=weights.recurrent_kernel.shape[0],
        num_layers=1,
        cell="gru",
    )
    model = CharRNN(model_config)
    model.load_state_dict(state_dict(weights))
    # Written in a hidden sibling folder, then renamed into place: an interrupted import leaves no half run.
    staging = run.parent / f".{run.name}.{os.getpid()}.{secrets.token_hex(4)}.import"
    try:
        staging.mkdir(parents=True)
        corpus.vocab.save(staging / run_folder.VOCAB)
        weight_files.save_weights(staging / run_folder.LATEST, model, epoch=0, step=0)
        run_folder.save_config(
            staging,
            model_config,
            config,
            {
                "name": corpus.name,
                "source": corpus.source,
                "chars": corpus.chars,
                "sha256": corpus.sha256,
                "train_chars": corpus.chars,
                "val_chars": 0,
            },
            started_from=origin,
        )
        run_folder.check_new_run_dir(run)
        os.replace(staging, run)  # onto a missing or empty folder only
    except OSError as exc:
        raise CharRNNError(f"cannot write {run}: {exc.strerror or exc}") from None
    finally:
        if staging.exists():
            for entry in staging.iterdir():
                entry.unlink()
            staging.rmdir()
    return run
