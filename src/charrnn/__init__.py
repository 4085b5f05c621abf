"""charrnn: character-level RNN text generation. Train on any text, generate from it.

    import charrnn
    model = charrnn.load("runs/shakespeare")
    print(model.generate("ROMEO:", length=300, temperature=0.8, seed=1)[0])

Attributes are imported on first use, so `charrnn.runtime` (numpy + onnxruntime) never imports torch, nor
does `charrnn.load` of a GRU run on the CPU (generation/runs.py).
"""

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY = {
    "ModelConfig": "config",
    "TrainConfig": "config",
    "CharRNNError": "errors",
    "CharModel": "generation.torch_model",
    "load": "generation.runs",
    "CharRNN": "model.network",
    "Callback": "training.trainer",
    "Trainer": "training.trainer",
    "Vocab": "data.vocab",
    "import_tutorial": "convert.keras",
}
# Public module -> where it lives: `from charrnn import runtime` is generation from an export, torch-free.
_MODULES = {"runtime": "generation.exported"}
__all__ = sorted([*_LAZY, *_MODULES])


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{_MODULES[name]}", __name__)
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")
