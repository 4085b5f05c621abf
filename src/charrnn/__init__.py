"""charrnn: character-level RNN text generation. Train on any text, generate from it.

    import charrnn
    model = charrnn.load("runs/shakespeare")
    print(model.generate("ROMEO:", length=300, temperature=0.8, seed=1)[0])
"""

__version__ = "0.1.0"

from .config import ModelConfig, TrainConfig  # noqa: E402
from .errors import CharRNNError  # noqa: E402
from .generate import CharModel, load  # noqa: E402
from .model import CharRNN  # noqa: E402
from .train import Callback, Trainer  # noqa: E402
from .vocab import Vocab  # noqa: E402

__all__ = ["CharModel", "CharRNN", "CharRNNError", "Callback", "ModelConfig", "TrainConfig", "Trainer", "Vocab", "load"]
