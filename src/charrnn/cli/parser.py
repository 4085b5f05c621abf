"""The argument parser: one sub-command per job, flags documented in docs/cli.md (generated from here)."""

from __future__ import annotations

import argparse
from pathlib import Path

from charrnn.cli import commands
from charrnn.cli.flags import PRECISION_HELP, model_flags, train_flags
from charrnn.config import (
    DEVICES,
    GENERATION_DEVICE,
    GENERATION_PRECISIONS,
    PROTOCOLS,
)
from charrnn.training.presets import NAMES


def build_parser() -> argparse.ArgumentParser:
    from charrnn import __version__

    parser = argparse.ArgumentParser(
        prog="charrnn", description="Character-level RNN: train on any text, generate from it."
    )
    parser.add_argument("--version", action="version", version=f"charrnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_generate(sub)
    _add_eval(sub)
    _add_import(sub)
    _add_export(sub)
    _add_serve(sub)
    _add_summary(sub)
    return parser


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (or resume one)", description="Train a model on a text; writes a run directory."
    )
    p.add_argument("--run", type=Path, help="run directory to create (default runs/<text name>)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue an interrupted or finished run")
    p.add_argument(
        "--preset",
        choices=NAMES,
        help="a named recipe (docs/guide.md), or auto: planned for --max-minutes on this machine (the default "
        "when --max-minutes is given without model flags); --config and flags override it",
    )
    p.add_argument("--config", help='JSON file {"model": {...}, "train": {...}}; flags override it')
    p.add_argument("--data-dir", help="folder searched first for built-in corpora (default $CHARRNN_DATA_DIR)")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes on this machine, trained together with DDP (launches torchrun; default 1)",
    )
    train_flags(p)
    model_flags(p)
    p.set_defaults(func=commands.cmd_train)


def _add_generate(sub) -> None:
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
        help=f"start from the whole of this UTF-8 file (- = standard input; at most "
        f"{commands.PROMPT_FILE_LIMIT // 2**20} MiB); instead of --prompt",
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
    p.add_argument(
        "--device", choices=DEVICES, default=GENERATION_DEVICE, help=f"cpu, cuda or auto (default {GENERATION_DEVICE})"
    )
    p.add_argument("--precision", choices=GENERATION_PRECISIONS, default="auto", help=PRECISION_HELP)
    p.set_defaults(func=commands.cmd_generate)


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="loss and bits/char of a run on a text", description="Score a text with a trained run."
    )
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("--text", required=True, help="file, folder, glob, URL or built-in name to score")
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--data-dir")
    p.add_argument("--checkpoint", choices=("best", "latest"))
    p.add_argument("--drop-unknown", action="store_true", help="skip characters the model never saw")
    p.add_argument(
        "--device", choices=DEVICES, default=GENERATION_DEVICE, help=f"cpu, cuda or auto (default {GENERATION_DEVICE})"
    )
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
    p.set_defaults(func=commands.cmd_eval)


def _add_import(sub) -> None:
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
    p.set_defaults(func=commands.cmd_import)


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a run to ONNX (runs without PyTorch)",
        description="Export a run's one-step generator to ONNX.",
    )
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (onnx)")
    p.add_argument("--out", type=Path, help="export directory (default RUN/onnx)")
    p.add_argument("--checkpoint", choices=("best", "latest"), help="which weights (default best if the run has it)")
    p.set_defaults(func=commands.cmd_export)


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="HTTP API and web page for a run or an export", description="Serve a model over HTTP."
    )
    p.add_argument("run", type=Path, metavar="RUN_OR_EXPORT")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--allowed-hosts",
        metavar="HOSTS",
        help="comma-separated Host names to answer besides localhost, 127.0.0.1 and [::1] ('*.example.com' for "
        "a domain, '*' for any); others get a 400 (default: a loopback --host answers only those three, "
        "any other --host answers any name)",
    )
    from charrnn.serving.app import ServeLimits  # stdlib only at import; FastAPI is imported when serving

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
    p.add_argument(
        "--model-name", help="the model's id in the OpenAI-compatible API (default: RUN_OR_EXPORT's folder name)"
    )
    p.set_defaults(func=commands.cmd_serve)


def _add_summary(sub) -> None:
    p = sub.add_parser(
        "summary", help="layer table and parameter count", description="Print the model's layers and parameters."
    )
    p.add_argument("run", type=Path, nargs="?", metavar="RUN", help="a run directory (else describe the flags below)")
    p.add_argument("--text", help="text whose vocabulary sizes the model (default shakespeare)")
    p.add_argument("--vocab-size", type=int, help="vocabulary size, instead of reading a text")
    p.add_argument("--data-dir")
    model_flags(p)
    p.set_defaults(func=commands.cmd_summary)
