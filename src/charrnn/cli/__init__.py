"""Command line: `charrnn train | generate | eval | export | serve | import | summary`.

Every command is a thin layer over the Python API (Trainer, load, CharModel); flags map one to one onto
ModelConfig / TrainConfig fields. parser.py builds the parser, flags.py the config flags, commands.py runs them."""

from __future__ import annotations

import sys

from charrnn.cli.parser import build_parser
from charrnn.errors import CharRNNError

__all__ = ["build_parser", "main"]


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
