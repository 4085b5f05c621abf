"""Command line: `charrnn train | generate | eval | export | serve | import | summary`. Every command is a thin layer over the
Python API (Trainer, load, CharModel); flags map one to one onto ModelConfig / TrainConfig fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import Any

from charrnn.config import (
    CELLS,
    DECODE_ERRORS,
    DEVICES,
    GENERATION_PRECISIONS,
    LR_SCHEDULES,
    PRECISIONS,
    PROTOCOLS,
    TENSORBOARD,
    ModelConfig,
    TrainConfig,
    from_dict,
    random_seed,
)
from charrnn.errors import CharRNNError
from charrnn.training.presets import PRESETS, preset

S = argparse.SUPPRESS  # flags not given stay absent, so config files and resumed runs are not overridden


PRECISION_HELP = (
    "products of a run's model: auto (default: bf16 where the CPU has it natively), fp32, bf16, or int8 "
    "(weights and state quantised to 8 bits: the fastest on CPUs with AVX512-VNNI, slightly less exact)"
)


def _train_flags(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = parser.add_argument_group("text")
    g.add_argument(
        "--text", default=S, help=f"file, folder of *.txt, glob, http(s) URL or built-in name (default {d.text})"
    )
    g.add_argument("--encoding", default=S, help=f"the text's encoding (default {d.encoding})")
    g.add_argument("--skip-chars", type=int, default=S, help="drop this many characters from the start")
    g.add_argument(
        "--decode-errors",
        choices=DECODE_ERRORS,
        default=S,
        help="files of a folder or glob that do not decode: fail (default), skip or replace (U+FFFD)",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=S,
        help=f"last part of the text held out for validation (default {d.val_fraction}; 0 = tutorial)",
    )
    g = parser.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=S, help=f"sequences per step (default {d.batch_size})")
    g.add_argument("--seq-len", type=int, default=S, help=f"characters per sequence (default {d.seq_len})")
    g.add_argument("--epochs", type=int, default=S, help=f"passes over the text (default {d.epochs})")
    g.add_argument(
        "--max-steps", type=int, default=S, help="stop after this many steps in total (default 0 = no limit)"
    )
    g.add_argument(
        "--max-minutes",
        type=float,
        default=S,
        help="stop after this much training time, with a checkpoint (default 0 = no limit)",
    )
    g.add_argument("--lr", type=float, default=S, help=f"Adam learning rate (default {d.lr})")
    g.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=S,
        help="constant (default), or cosine decay to lr/10 over the planned steps",
    )
    g.add_argument("--clip", type=float, default=S, help="clip the gradient norm (default 0 = off)")
    g.add_argument("--seed", type=int, default=S, help=f"random seed (default {d.seed})")
    g.add_argument("--device", choices=DEVICES, default=S, help="auto (default), cpu or cuda")
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=S,
        help="matrix products in bf16 or fp32; auto (default) = bf16 where the hardware does it natively",
    )
    g.add_argument(
        "--patience", type=int, default=S, help="stop after N epochs without validation improvement (default 0 = off)"
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=S,
        help=f"also save every N steps (default {d.checkpoint_every}; 0 = epoch ends only)",
    )
    g.add_argument("--log-every", type=int, default=S, help=f"metrics line every N steps (default {d.log_every})")
    g.add_argument(
        "--eval-chars",
        type=int,
        default=S,
        help=f"validate on a fixed sample of at most this many characters (default {d.eval_chars:,}; 0 = the whole split)",
    )
    g.add_argument(
        "--tensorboard",
        choices=TENSORBOARD,
        default=S,
        help="TensorBoard event files in the run directory: on, off, or auto (default: on when tensorboard is installed)",
    )
    g.add_argument(
        "--init-from",
        metavar="RUN",
        default=S,
        help="fine-tune: start from this run's (or imported model's) weights and shape; new characters are appended",
    )
    g = parser.add_argument_group("stateful training, regularisation and validation (docs/quality.md)")
    g.add_argument(
        "--stateful",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="truncated BPTT: batch_size contiguous streams, state carried between batches (default off: state reset per sequence)",
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        default=S,
        help="AdamW decoupled weight decay on weight matrices (default 0 = Adam)",
    )
    g.add_argument(
        "--ema",
        type=float,
        default=S,
        help="decay of the weight average used for validation and saved weights, e.g. 0.999 (default 0 = off)",
    )
    g.add_argument(
        "--val-protocol",
        choices=PROTOCOLS,
        default=S,
        help=f"what val loss (best, --patience) measures (default {d.val_protocol})",
    )
    g.add_argument(
        "--val-also",
        default=S,
        help="more protocols scored each epoch for the record: comma-separated or all (default none)",
    )
    g.add_argument(
        "--eval-windows",
        type=int,
        default=S,
        help=f"windows protocol: windows scored (default {d.eval_windows:,} = nanoGPT's 200 x 64)",
    )
    g.add_argument(
        "--eval-window-len",
        type=int,
        default=S,
        help=f"windows protocol: characters per window (default {d.eval_window_len})",
    )


def _model_flags(parser: argparse.ArgumentParser) -> None:
    d = ModelConfig(vocab_size=1)
    g = parser.add_argument_group("model")
    g.add_argument("--cell", choices=CELLS, default=S, help=f"recurrent cell (default {d.cell})")
    g.add_argument(
        "--layers", dest="num_layers", type=int, default=S, help=f"recurrent layers (default {d.num_layers})"
    )
    g.add_argument(
        "--hidden", dest="hidden_size", type=int, default=S, help=f"units per layer (default {d.hidden_size})"
    )
    g.add_argument(
        "--embedding", dest="embedding_size", type=int, default=S, help=f"embedding width (default {d.embedding_size})"
    )
    g.add_argument("--dropout", type=float, default=S, help="dropout between layers and before the output (default 0)")
    g.add_argument(
        "--weight-drop",
        type=float,
        default=S,
        help="DropConnect on hidden-to-hidden weights, training only (default 0)",
    )
    g.add_argument(
        "--embedding-dropout",
        type=float,
        default=S,
        help="drop whole characters' embeddings, training only (default 0)",
    )


def _fields(cls, args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


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
    train_fields, model_fields = _fields(TrainConfig, args), _fields(ModelConfig, args)
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
    from charrnn.data.sources import load_text
    from charrnn.generation.torch_model import load

    model = load(args.run, checkpoint=args.checkpoint, device=args.device)
    corpus = load_text(args.text, encoding=args.encoding, data_dir=args.data_dir)
    protocols = PROTOCOLS if args.protocol == "all" else (args.protocol,)
    for protocol in protocols:
        result = model.evaluate(
            corpus.text,
            drop_unknown=args.drop_unknown,
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
    from charrnn.data.sources import load_text
    from charrnn.data.vocab import Vocab
    from charrnn.model.network import CharRNN
    from charrnn.model.summary import summary
    from charrnn.storage.run import load_config

    fields = _fields(ModelConfig, args)
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
            else len(Vocab.from_text(load_text(args.text or "shakespeare", data_dir=args.data_dir).text))
        )
        config = ModelConfig(vocab_size=vocab_size, **fields)
    print(summary(CharRNN(config)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from charrnn import __version__
    from charrnn.serving.app import ServeLimits  # stdlib only at import; FastAPI is imported when serving

    parser = argparse.ArgumentParser(
        prog="charrnn", description="Character-level RNN: train on any text, generate from it."
    )
    parser.add_argument("--version", action="version", version=f"charrnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train", help="train a model (or resume one)", description="Train a model on a text; writes a run directory."
    )
    p.add_argument("--run", type=Path, help="run directory to create (default runs/<text name>)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue an interrupted or finished run")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), help="a named recipe (see README); --config and flags override it"
    )
    p.add_argument("--config", help='JSON file {"model": {...}, "train": {...}}; flags override it')
    p.add_argument("--data-dir", help="folder searched first for built-in corpora (default $CHARRNN_DATA_DIR)")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes on this machine, trained together with DDP (launches torchrun; default 1)",
    )
    _train_flags(p)
    _model_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "generate",
        help="generate text from a run or an export",
        description="Generate text from a trained run or an exported directory.",
    )
    p.add_argument("run", type=Path, metavar="RUN_OR_EXPORT")
    p.add_argument("--prompt", help="text to start from (default: empty, start a fresh line)")
    p.add_argument(
        "--prompt-file",
        metavar="FILE",
        help="start from the whole of this UTF-8 file (- = standard input); instead of --prompt",
    )
    p.add_argument("--length", type=int, default=1000, help="characters to generate after the prompt (default 1000)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="sample only from the k likeliest characters (0 = off)")
    p.add_argument(
        "--top-p", type=float, default=1.0, help="sample from the smallest set with this much probability (1 = off)"
    )
    p.add_argument("--seed", type=int, help="random seed: the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1, help="samples generated together in one batch (default 1)")
    p.add_argument("--checkpoint", choices=("best", "latest"), help="which weights (default best if the run has it)")
    p.add_argument("--drop-unknown", action="store_true", help="drop prompt characters the model never saw")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--precision", choices=GENERATION_PRECISIONS, default="auto", help=PRECISION_HELP)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "eval", help="loss and bits/char of a run on a text", description="Score a text with a trained run."
    )
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("--text", required=True, help="file, folder, glob, URL or built-in name to score")
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--data-dir")
    p.add_argument("--checkpoint", choices=("best", "latest"))
    p.add_argument("--drop-unknown", action="store_true", help="skip characters the model never saw")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument(
        "--protocol",
        choices=(*PROTOCOLS, "all"),
        default="chunks",
        help="chunks (default: state reset every seq_len), stateful (streamed once), windows (nanoGPT's), or all",
    )
    p.add_argument(
        "--windows", type=int, default=12_800, help="windows protocol: windows scored (default 12,800 = 200 x 64)"
    )
    p.add_argument("--window-len", type=int, default=256, help="windows protocol: characters per window (default 256)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "import",
        help="turn a TensorFlow tutorial model into a run",
        description="Import a model trained by the TensorFlow text-generation tutorial (see docs/import.md).",
    )
    p.add_argument(
        "path",
        type=Path,
        metavar="PATH",
        help="a Keras 3 .weights.h5, a TF checkpoint prefix "
        "(training_checkpoints/ckpt_10) or a folder holding them (its latest checkpoint)",
    )
    p.add_argument("--text", required=True, help="the text the model was trained on: its vocabulary is rebuilt from it")
    p.add_argument("--run", type=Path, required=True, help="run directory to create")
    p.add_argument(
        "--skip-chars", type=int, default=0, help="drop this many characters first, as the model's training did"
    )
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--data-dir", help="folder searched first for built-in corpora")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "export",
        help="export a run to ONNX (runs without PyTorch)",
        description="Export a run's one-step generator to ONNX.",
    )
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (onnx)")
    p.add_argument("--out", type=Path, help="export directory (default RUN/onnx)")
    p.add_argument("--checkpoint", choices=("best", "latest"), help="which weights (default best if the run has it)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "serve", help="HTTP API and web page for a run or an export", description="Serve a model over HTTP."
    )
    p.add_argument("run", type=Path, metavar="RUN_OR_EXPORT")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    limits = ServeLimits()
    p.add_argument(
        "--max-length", type=int, default=limits.max_length, help=f"characters per sample (default {limits.max_length})"
    )
    p.add_argument(
        "--max-samples",
        type=int,
        default=limits.max_samples,
        help=f"samples per request (default {limits.max_samples})",
    )
    p.add_argument(
        "--max-prompt-chars",
        type=int,
        default=limits.max_prompt_chars,
        help=f"prompt length (default {limits.max_prompt_chars})",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=limits.max_body_bytes,
        help=f"request body size (default {limits.max_body_bytes})",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=limits.max_batch,
        help=f"rows (samples of all requests) generated together; more requests wait (default {limits.max_batch})",
    )
    p.add_argument("--threads", type=int, help="compute threads, all on one worker (default: the cores)")
    p.add_argument("--precision", choices=GENERATION_PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("--model-name", help="the model's id in the OpenAI-compatible API (default: RUN_OR_EXPORT as given)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "summary", help="layer table and parameter count", description="Print the model's layers and parameters."
    )
    p.add_argument("run", type=Path, nargs="?", metavar="RUN", help="a run directory (else describe the flags below)")
    p.add_argument("--text", help="text whose vocabulary sizes the model (default shakespeare)")
    p.add_argument("--vocab-size", type=int, help="vocabulary size, instead of reading a text")
    p.add_argument("--data-dir")
    _model_flags(p)
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --nproc relaunches
    # Never crash on printing a character the terminal's encoding lacks (e.g. Chinese on an ASCII locale).
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return args.func(args)
    except CharRNNError as exc:
        print(f"charrnn: error: {exc}\n", end="", file=sys.stderr)  # one write: ranks' lines never interleave
        return 2
    except KeyboardInterrupt:
        print("\ncharrnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0  # e.g. `charrnn generate ... | head`
    except OSError as exc:
        print(f"charrnn: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
