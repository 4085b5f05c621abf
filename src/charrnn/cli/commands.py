"""The commands: each a thin layer over the Python API (Trainer, load_any, export, serve, import_tutorial)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from charrnn.cli.flags import fields_of
from charrnn.config import (
    PROTOCOLS,
    ModelConfig,
    TrainConfig,
    from_dict,
    random_seed,
)
from charrnn.errors import CharRNNError
from charrnn.training.presets import preset


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
        from charrnn.training import distributed

        if not model and config.max_minutes > 0 and distributed.world_size() == 1:
            # A time budget and no size: pick one for the corpus and budget (sizing.py; docs/quality.md).
            from charrnn.training.sizing import pick

            model = pick(config, args.data_dir, say=lambda line: print(line, file=sys.stderr, flush=True))
        trainer = Trainer.create(run_dir, config, model, data_dir=args.data_dir)
    from charrnn.training.distributed import peer_errors

    with peer_errors():
        result = trainer.fit()
    if result.status == "interrupted":
        return 128 + (trainer.stop_signal or signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM
    if trainer.main:
        print(
            f'run saved in {trainer.run_dir}; generate with: charrnn generate {trainer.run_dir} --prompt "..."',
            file=sys.stderr,
        )
    return 0


def _default_name(text: str) -> str:
    from charrnn.data.sources import BUILTINS

    if text in BUILTINS:
        return text
    stem = Path(text.rstrip("/").rsplit("/", 1)[-1]).stem
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "run"


def read_prompt_file(name: str) -> str:
    """The whole of a prompt file, or of standard input for `-`, as UTF-8 text (kept exactly, final newline too)."""
    try:
        if name == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        return Path(name).read_bytes().decode("utf-8")
    except OSError as exc:
        raise CharRNNError(f"cannot read --prompt-file {name}: {exc.strerror or exc}") from None
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
        for i, text in enumerate(model.generate(prompt, **options), 1):
            out.write(f"--- sample {i} ---\n{text}\n")
    out.flush()
    if args.seed is None and args.temperature != 0:  # greedy text needs no seed
        print(f"(seed {seed}: pass --seed {seed} to get this text again)", file=sys.stderr)
    return 0


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

    serve(args.run, load, args.host, args.port, limits, args.model_name, args.threads, args.precision)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from charrnn.data.prepare import prepare
    from charrnn.model.network import CharRNN
    from charrnn.model.summary import summary
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
    print(summary(CharRNN(config)))
    return 0
