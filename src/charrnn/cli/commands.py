"""The commands: each a thin layer over the Python API (Trainer, load_any, export, serve, import_tutorial)."""

from __future__ import annotations

import argparse
import array
import json
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from charrnn.cli.flags import fields_of
from charrnn.config import (
    PROTOCOLS,
    ModelConfig,
    TrainConfig,
    from_dict,
    random_seed,
)
from charrnn.errors import CharRNNError
from charrnn.training.presets import AUTO, preset


def _read_config_file(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JSON file {"model": {...}, "train": {...}}; flags given on the command line win."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CharRNNError(f"cannot read --config {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CharRNNError(f"--config {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"model", "train"}:
        raise CharRNNError(f"--config {path}: expected an object with 'model' and/or 'train' keys")
    model, train = data.get("model", {}), data.get("train", {})
    if "vocab_size" in model:
        raise CharRNNError(f"--config {path}: vocab_size comes from the text; remove it")
    from_dict(ModelConfig, {"vocab_size": 1, **model}, f"--config {path} model")  # validate keys and values now
    from_dict(TrainConfig, train, f"--config {path} train")
    return model, train


def cmd_train(args: argparse.Namespace) -> int:
    from charrnn.training.trainer import Trainer

    if args.nproc != 1:
        from charrnn.training.distributed import launch, without_nproc

        return launch(args.nproc, without_nproc(args.argv))
    train_fields, model_fields = fields_of(TrainConfig, args), fields_of(ModelConfig, args)
    if args.resume:
        if model_fields or args.config or args.preset:
            raise CharRNNError(
                "--resume continues the run's own model and settings; drop the model flags, --config and --preset"
            )
        if args.run is not None and Path(args.run).resolve() != Path(args.resume).resolve():
            raise CharRNNError(
                f"--resume {args.resume} continues that run in its own folder; drop --run {args.run} "
                "(to start a new run elsewhere, use --run without --resume)"
            )
        trainer = Trainer.resume(args.resume, data_dir=args.data_dir, **train_fields)
    else:
        preset_model, preset_train = preset(args.preset) if args.preset else ({}, {})
        file_model, file_train = _read_config_file(args.config) if args.config else ({}, {})
        config = from_dict(TrainConfig, {**preset_train, **file_train, **train_fields}, "train settings")
        run_dir = args.run or Path("runs") / _default_name(config.text)
        model = {**preset_model, **file_model, **model_fields}
        plan = None
        automatic = not (args.preset or model or config.init_from) and config.max_minutes > 0
        if args.preset == AUTO or automatic:
            # The recipe for the budget, measured on this machine (training/recipe.py; docs/quality.md).
            from charrnn.training.planner import plan_run

            given_train = {**file_train, **train_fields}
            config, model, plan = plan_run(config, model, given_train, args.data_dir, say=_say)
        trainer = Trainer.create(run_dir, config, model, data_dir=args.data_dir, plan=plan)
    from charrnn.training.distributed import peer_errors
    from charrnn.training.stopping import nothing_to_do

    idle = nothing_to_do(trainer) is not None
    with peer_errors():
        result = trainer.fit()
    if result.status == "interrupted":
        return 128 + (trainer.stop_signal or signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM
    if trainer.main:
        saved = "the run is in" if idle else "run saved in"
        print(
            f'{saved} {trainer.run_dir}; generate with: charrnn generate {trainer.run_dir} --prompt "..."',
            file=sys.stderr,
        )
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _default_name(text: str) -> str:
    from charrnn.data.sources import BUILTINS

    if text in BUILTINS:
        return text
    stem = Path(text.rstrip("/").rsplit("/", 1)[-1]).stem
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "run"


# The most --prompt-file reads: far more than a prompt needs (an RNN's state depends mostly on the last
# few thousand characters), and small enough that `--prompt-file /dev/zero` ends in an error at once.
PROMPT_FILE_LIMIT = 16 * 2**20  # bytes


def read_prompt_file(name: str) -> str:
    """The whole of a prompt file, or of standard input for `-`, as UTF-8 text (kept exactly, final newline too),
    read no further than PROMPT_FILE_LIMIT."""
    try:
        if name == "-":
            data = sys.stdin.buffer.read(PROMPT_FILE_LIMIT + 1)
        else:
            with open(name, "rb") as file:
                data = file.read(PROMPT_FILE_LIMIT + 1)
    except OSError as exc:
        raise CharRNNError(f"cannot read --prompt-file {name}: {exc.strerror or exc}") from None
    if len(data) > PROMPT_FILE_LIMIT:
        raise CharRNNError(
            f"--prompt-file {name} is longer than {PROMPT_FILE_LIMIT // 2**20} MiB, the most a prompt may be; "
            "shorten it (the model's state depends mostly on the prompt's last few thousand characters)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CharRNNError(
            f"--prompt-file {name} is not UTF-8 text (byte {exc.start}); convert it, e.g. with iconv"
        ) from None


def cmd_generate(args: argparse.Namespace) -> int:
    from charrnn.generation.loader import load_any

    if args.prompt is not None and args.prompt_file is not None:
        raise CharRNNError("give --prompt or --prompt-file, not both")
    prompt = read_prompt_file(args.prompt_file) if args.prompt_file is not None else (args.prompt or "")
    model = load_any(args.run, args.checkpoint, args.device, precision=args.precision)
    seed = args.seed if args.seed is not None else random_seed()
    options = dict(
        length=args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=seed,
        num_samples=args.num_samples,
        drop_unknown=args.drop_unknown,
    )
    out = sys.stdout
    if args.num_samples == 1:
        for pieces in model.stream(prompt, **options):
            out.write(pieces[0])
            out.flush()
        out.write("\n")
    else:
        write_samples(model.stream(prompt, **options), out)
    out.flush()
    if args.seed is None and args.temperature != 0:  # greedy text needs no seed
        # The precision too: `auto` may choose another one on another machine, and with it other text.
        again = f"--seed {seed} --precision {model.backend(args.num_samples).precision}"
        print(f"(seed {seed}: pass {again} to get this text again)", file=sys.stderr)
    return 0


# Characters of the later samples held in memory before they are moved to the temporary file.
SPOOL_CHARS = 2**16


class Spool:
    """The generated characters of `rows` samples, in a temporary file, read back one sample at a time.
    Each block holds `rows` byte counts (int64), then each sample's characters of those steps (UTF-8);
    only the blocks' offsets stay in memory."""

    def __init__(self, rows: int):
        self.rows, self.file, self.blocks, self.held = rows, tempfile.TemporaryFile(), [], []

    def add(self, chars: list[str]) -> None:
        self.held.append(chars)
        if len(self.held) * self.rows >= SPOOL_CHARS:
            self.move()

    def move(self) -> None:
        if not self.held:
            return
        columns = ["".join(column).encode("utf-8") for column in zip(*self.held)]
        self.blocks.append(self.file.tell())
        self.file.write(array.array("q", map(len, columns)).tobytes())
        self.file.writelines(columns)
        self.held.clear()

    def read(self, row: int) -> Iterator[str]:
        self.move()
        for start in self.blocks:
            self.file.seek(start)
            lengths = array.array("q")
            lengths.frombytes(self.file.read(8 * self.rows))
            self.file.seek(start + 8 * self.rows + sum(lengths[:row]))
            yield self.file.read(lengths[row]).decode("utf-8")


def write_samples(stream: Iterator[list[str]], out: TextIO) -> None:
    """Each sample under a `--- sample N ---` line. The first is written as it is generated; the others
    wait in a temporary file, so memory stays flat however long the texts (`--num-samples 2 --length
    1000000000`). The prompts stay in memory: each prompt's samples share one string."""
    prompts = next(stream)  # the request's errors are raised here, before anything is written
    out.write(f"--- sample 1 ---\n{prompts[0]}")
    spool = Spool(len(prompts) - 1)
    try:
        for chars in stream:
            out.write(chars[0])
            out.flush()
            spool.add(chars[1:])
        out.write("\n")
        for row, prompt in enumerate(prompts[1:]):
            out.write(f"--- sample {row + 2} ---\n{prompt}")
            out.writelines(spool.read(row))
            out.write("\n")
    finally:
        spool.file.close()


def cmd_eval(args: argparse.Namespace) -> int:
    from charrnn.data.prepare import in_vocab, prepare
    from charrnn.generation.torch_model import load

    model = load(args.run, checkpoint=args.checkpoint, device=args.device)
    # Read as training reads a text, and streamed: a text of any size is scored in bounded memory.
    corpus = prepare(args.text, encoding=args.encoding, data_dir=args.data_dir)
    ids = in_vocab(corpus, model.vocab, drop_unknown=args.drop_unknown)
    protocols = PROTOCOLS if args.protocol == "all" else (args.protocol,)
    for protocol in protocols:
        result = model.evaluate_ids(
            ids,
            protocol=protocol,
            windows=args.windows,
            window_len=args.window_len,
        )
        print(
            f"{corpus.source}: {result['chars']:,} characters, {protocol:<8} loss {result['loss']:.4f} nats/char, "
            f"{result['bits_per_char']:.4f} bits/char",
            flush=True,
        )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from charrnn.convert.keras import import_tutorial
    from charrnn.storage.run import load_config

    run = import_tutorial(
        args.path, args.text, args.run, skip_chars=args.skip_chars, encoding=args.encoding, data_dir=args.data_dir
    )
    model = load_config(run)[0]
    print(
        f"imported the tutorial's GRU (embedding {model.embedding_size}, {model.hidden_size} units, "
        f"{model.vocab_size} characters; its [UNK] entry dropped) from {args.path} into {run}"
    )
    print(
        f'generate with: charrnn generate {run} --prompt "..."; fine-tune with: '
        f"charrnn train --init-from {run} --text NEW_TEXT --run NEW_RUN"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from charrnn.export.onnx import export

    meta = export(args.run, args.out, args.checkpoint, args.format)
    out = Path(args.out) if args.out else Path(args.run) / "onnx"
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(
        f"exported {meta['model']['cell']} x{meta['model']['num_layers']} ({meta['parameters']:,} parameters) to {out} "
        f"({size:.1f} MB); ONNX matches PyTorch to {meta['verified_max_abs_diff']:.1e}"
    )
    print(f'generate with: charrnn generate {out} --prompt "..."   (needs only numpy and onnxruntime)')
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from charrnn.generation.loader import load_any
    from charrnn.serving.app import ServeLimits, serve

    limits = ServeLimits(
        **{
            k: getattr(args, k)
            for k in ("max_length", "max_samples", "max_prompt_chars", "max_body_bytes", "max_batch")
        }
    )

    def load(threads, precision):
        return load_any(args.run, threads=threads, precision=precision)

    serve(
        args.run, load, args.host, args.port, limits, args.model_name, args.threads, args.precision, args.allowed_hosts
    )
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from charrnn.data.prepare import prepare
    from charrnn.model.summary import config_summary
    from charrnn.storage.run import load_config

    fields = fields_of(ModelConfig, args)
    fields.pop("vocab_size", None)  # --vocab-size is handled below
    if args.run:
        if fields or args.text or args.vocab_size is not None:
            raise CharRNNError("summary of a run takes no model flags, --text or --vocab-size")
        config = load_config(args.run)[0]
    else:
        if args.vocab_size is not None and args.text:
            raise CharRNNError("give --text or --vocab-size, not both")
        vocab_size = (
            args.vocab_size
            if args.vocab_size is not None
            else len(prepare(args.text or "shakespeare", data_dir=args.data_dir).vocab)
        )
        config = ModelConfig(vocab_size=vocab_size, **fields)
    print(config_summary(config))
    return 0
