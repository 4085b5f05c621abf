"""Every file charrnn reads, checked before it is used: one line naming the file, what is wrong and what
to do, never a KeyError or a silently wrong answer.

The JSON files (config.json, vocab.json, export.json) and each line of metrics.jsonl are pydantic models
in strict mode: a boolean is not a number, a missing or unknown key is an error (metrics lines may carry
keys a later charrnn adds). Tensors (weights, trainer state) are checked in
model/weights.py against the model they must fit. Weight files carry a SHA-256 of their contents so that
flipped bytes are caught on load. No torch here: the ONNX runtime reads export.json with it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from charrnn.errors import CharRNNError

Model = TypeVar("Model", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Open(BaseModel):
    # For records that newer charrnn versions may extend with informational keys (corpus, metrics).
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class VocabFile(_Strict):
    kind: ClassVar[str] = "vocabulary"
    versions: ClassVar[str] = "1 and 2"
    format_version: Literal[1, 2]  # 1: sorted characters; 2: any order (a fine-tuned run's)
    chars: list[str] = Field(min_length=1)


class CorpusInfo(_Open):
    name: str = ""
    source: str = ""
    chars: int = Field(0, ge=0)
    sha256: str = ""
    train_chars: int = Field(0, ge=0)
    val_chars: int = Field(0, ge=0)


SHA256_HEX = r"^[0-9a-f]{64}$"


class ConfigFile(_Strict):
    kind: ClassVar[str] = "config"
    versions: ClassVar[str] = "1 to 3"
    format_version: Literal[1, 2, 3]  # 2 records vocab_sha256; 3 may record a plan
    charrnn_version: str
    model: dict[str, Any]  # checked field by field by config.ModelConfig
    train: dict[str, Any]  # checked by config.TrainConfig
    corpus: CorpusInfo = CorpusInfo()
    # Where the weights started, when not from a fresh initialisation: {"kind": "run", ...} for
    # `train --init-from`, {"kind": "tensorflow", ...} for `charrnn import`. Informational.
    started_from: dict[str, Any] | None = None
    # vocab_sha256() of the run's vocab.json: one of the same size swapped in would otherwise load and
    # write text in the wrong alphabet. Version 1 (written before it was recorded) has none.
    vocab_sha256: str | None = Field(None, pattern=SHA256_HEX)
    # What `--preset auto` measured and why it chose the settings in model and train (training/recipe.py).
    # Informational: the settings themselves are model's and train's, which is what a resume reads.
    plan: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _versions_have_their_fields(self) -> ConfigFile:
        if self.format_version >= 2 and self.vocab_sha256 is None:
            raise ValueError(f"vocab_sha256: Field required in format version {self.format_version}")
        if self.format_version < 3 and self.plan is not None:
            raise ValueError(f"plan: not part of format version {self.format_version}")
        return self


class ExportArchitecture(_Strict):
    vocab_size: int = Field(ge=1)
    embedding_size: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    cell: Literal["gru", "lstm", "rnn"]


class ExportFile(_Open):
    kind: ClassVar[str] = "export"
    format_version: Literal[1]
    format: Literal["onnx"]
    model: ExportArchitecture
    parameters: int = Field(ge=1)
    state_shape: tuple[int, Literal["batch"], int]
    source: dict[str, Any] = {}
    model_sha256: str | None = None  # of model.onnx; absent in exports made before it was recorded
    vocab_sha256: str | None = Field(None, pattern=SHA256_HEX)  # of vocab.json's characters; likewise

    @model_validator(mode="after")
    def _state_fits_model(self) -> ExportFile:
        states = self.model.num_layers * (2 if self.model.cell == "lstm" else 1)
        if self.state_shape[0] != states or self.state_shape[2] != self.model.hidden_size:
            raise ValueError(
                f"state_shape {list(self.state_shape)} does not fit a {self.model.num_layers}-layer "
                f"{self.model.cell} of hidden size {self.model.hidden_size} (expected [{states}, 'batch', {self.model.hidden_size}])"
            )
        return self


class TrainerStateInfo(BaseModel):
    """trainer_state.pt's plain fields; its tensors are checked against the model in model/weights.py."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, arbitrary_types_allowed=True)
    kind: ClassVar[str] = "trainer state"
    format_version: Literal[1]
    model: dict[str, Any]
    optimizer: dict[str, Any]
    epoch: int = Field(ge=0)
    step_in_epoch: int = Field(ge=0)
    global_step: int = Field(ge=0)
    epoch_loss_sum: float
    best_val_loss: float | None
    bad_epochs: int = Field(ge=0)
    elapsed: float = Field(ge=0)
    rng: Any
    cuda_rng: Any = None
    model_sha256: str | None = None  # of the weights in `model`; absent in states written before it was
    carried: Any = None  # stateful training: the recurrent state carried into the next batch (mid-epoch only)
    average: Any = None  # ema > 0: {"updates": tensor, "weights": name -> tensor}, the weight average


class StepRecord(_Open):
    """A metrics.jsonl line for a logged step. Keys a later charrnn adds are kept (extra); the ones read
    here are typed, and those older runs lack are optional."""

    kind: Literal["step"]
    format_version: Literal[1] = 1  # absent in runs written before metrics.jsonl carried it
    epoch: int = Field(ge=1)
    step: int = Field(ge=0)
    loss: float
    lr: float | None = None
    elapsed: float | None = None
    precision: str | None = None


class EpochRecord(_Open):
    """A metrics.jsonl line for an epoch's end (a partial epoch when a stop rule ended it)."""

    kind: Literal["epoch"]
    format_version: Literal[1] = 1
    epoch: int = Field(ge=1)
    step: int = Field(ge=0)
    complete: bool = True
    train_loss: float | None = None
    val_loss: float | None = None
    val_protocol: str | None = None
    val_losses: dict[str, float] | None = None
    val_bits_per_char: float | None = None
    seconds: float | None = None
    ms_per_step: float | None = None
    elapsed: float | None = None
    lr: float | None = None
    precision: str | None = None
    val_chars_scored: int | None = None


METRICS_VERSIONS = (1,)
_METRICS_RECORD = TypeAdapter(Annotated[StepRecord | EpochRecord, Field(discriminator="kind")])


def _problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _invalid(model: type[BaseModel], exc: ValidationError, path: Path, fix: str) -> CharRNNError:
    for error in exc.errors():
        if error["loc"] == ("format_version",) and error["type"] == "literal_error":
            # Not damage: a file from another charrnn version.
            return CharRNNError(
                f"{path}: {model.kind} format version {error.get('input')!r} is not supported "
                f"(this charrnn reads {getattr(model, 'versions', '1')}); upgrade charrnn, or {fix}"
            )
    return CharRNNError(f"{path} is damaged or not a charrnn file ({_problems(exc)}); {fix}")


def _read_text(path: Path, fix: str) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CharRNNError(f"{path} is missing; {fix}") from None
    except OSError as exc:
        raise CharRNNError(f"cannot read {path}: {exc.strerror or exc}; {fix}") from None
    except UnicodeDecodeError:
        raise CharRNNError(f"{path} is damaged (not UTF-8 text); {fix}") from None


def parse(model: type[Model], data: Any, path: Path, fix: str) -> Model:
    """Validate Python data read from `path` (e.g. a trainer state) against `model`; errors are one line
    naming the file and `fix`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(model, exc, path, fix) from None


def load(model: type[Model], path: Path, fix: str) -> Model:
    """Read and validate a JSON file (in JSON mode, where an array is a valid tuple)."""
    text = _read_text(path, fix)
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise _invalid(model, exc, path, fix) from None


def metrics_record(data: Any, where: str, fix: str) -> StepRecord | EpochRecord:
    """Validate one parsed metrics.jsonl line; `where` names it ("PATH line N")."""
    version = data.get("format_version", 1) if isinstance(data, dict) else 1
    if version not in METRICS_VERSIONS:
        raise CharRNNError(
            f"{where}: metrics format version {version!r} is not supported (this charrnn reads "
            f"{', '.join(map(str, METRICS_VERSIONS))}); upgrade charrnn, or {fix}"
        )
    try:
        return _METRICS_RECORD.validate_python(data)
    except ValidationError as exc:
        raise CharRNNError(f"{where} is damaged ({_problems(exc)}); {fix}") from None


def vocab_sha256(chars) -> str:
    """SHA-256 of a vocabulary's characters in id order (not of the file's bytes, so rewriting vocab.json
    with other spacing keeps it). config.json and export.json record it."""
    return hashlib.sha256(json.dumps(list(chars), ensure_ascii=True).encode("ascii")).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
