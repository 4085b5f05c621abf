"""charrnn: character-level RNN text generation. Train on any text, generate from it.

    import charrnn
    model = charrnn.load("runs/shakespeare")
    print(model.generate("ROMEO:", length=300, temperature=0.8, seed=1)[0])

Attributes are imported on first use, so `charrnn.runtime` (numpy + onnxruntime) never imports torch.
"""

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "config", "TrainConfig": "config", "CharRNNError": "errors", "CharModel": "generate",
    "load": "generate", "CharRNN": "model", "Callback": "train", "Trainer": "train", "Vocab": "vocab",
    "import_tutorial": "importer",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")
