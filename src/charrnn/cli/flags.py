"""Flags that map one to one onto TrainConfig and ModelConfig fields (`charrnn train`, `charrnn summary`).

Every flag defaults to argparse.SUPPRESS, so a flag not given stays absent and neither a --config file nor a
resumed run's own settings are overridden; the help text shows the field's real default."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from charrnn.config import (
    CELLS,
    DECODE_ERRORS,
    DEVICES,
    LR_SCHEDULES,
    PRECISIONS,
    PROTOCOLS,
    TENSORBOARD,
    ModelConfig,
    TrainConfig,
)

S = argparse.SUPPRESS  # flags not given stay absent, so config files and resumed runs are not overridden


PRECISION_HELP = (
    "products of a run's model: auto (default: int8 where the CPU has AVX512-VNNI, else bf16 where it has "
    "bf16 natively and it pays at the batch size, else fp32), fp32, bf16, or int8 (weights and state quantised "
    "to 8 bits: the fastest on CPUs with AVX512-VNNI, slightly less exact)"
)


def train_flags(parser: argparse.ArgumentParser) -> None:
    """TrainConfig's fields, in three groups."""
    d = TrainConfig()
    _text_flags(parser, d)
    _training_flags(parser, d)
    _regularisation_flags(parser, d)


def _text_flags(parser: argparse.ArgumentParser, d: TrainConfig) -> None:
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


def _training_flags(parser: argparse.ArgumentParser, d: TrainConfig) -> None:
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
        help="stop after this much training time, with a checkpoint (default 0 = no limit); without model "
        "flags, the recipe for this budget is planned (--preset auto)",
    )
    g.add_argument(
        "--fit-budget",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="with --max-minutes: at each checkpoint, set --max-steps (the schedule's end) to what the rest of "
        "the budget holds at the speed so far (default off; on in --preset auto)",
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
        help="matrix products in bf16 or fp32; auto (default) = bf16 where it trains faster (AMX tiles or CUDA), else fp32",
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


def _regularisation_flags(parser: argparse.ArgumentParser, d: TrainConfig) -> None:
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


def model_flags(parser: argparse.ArgumentParser) -> None:
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


def fields_of(cls, args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}
