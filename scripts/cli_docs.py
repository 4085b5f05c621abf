"""Write docs/cli.md from the real command-line parser, so the flag reference cannot drift from the code.

    python scripts/cli_docs.py           # rewrite docs/cli.md
    python scripts/cli_docs.py --check   # exit 1 if docs/cli.md differs from what the parser gives

For each command: its description, then one table per group of flags (flag | default | help). Flags whose
argparse default is SUPPRESS (so that a config file or a resumed run is not overridden) show the default
of the TrainConfig / ModelConfig field they set; a SUPPRESS flag that maps onto no field is an error here,
never a blank in the docs. Nothing depends on the terminal's width, so the output is the same everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "cli.md"

HEADER = """# Command-line reference

Generated from the parser by `python scripts/cli_docs.py`; do not edit by hand (`--check` in the tests
fails when this page and the parser differ). Every training flag sets one field of `TrainConfig` or
`ModelConfig` (`src/charrnn/config.py`); `--config FILE.json` with `{"model": {...}, "train": {...}}` sets
several at once, and flags given on the command line win. Guides: [guide.md](guide.md),
[serving.md](serving.md), [export.md](export.md), [scale.md](scale.md).
"""


def config_defaults() -> dict[str, object]:
    """Field name -> default, for every TrainConfig and ModelConfig field that has one."""
    from charrnn.config import ModelConfig, TrainConfig

    defaults: dict[str, object] = {}
    for cls in (ModelConfig, TrainConfig):
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                defaults[field.name] = field.default
    return defaults


def show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"`{value:,}`"
    if isinstance(value, str) and value == "":
        return "none"
    return f"`{value}`"


def default_of(action: argparse.Action, defaults: dict[str, object], command: str) -> str:
    if action.required:
        return "required"
    if isinstance(action, argparse._VersionAction):
        return "—"
    if not action.option_strings:  # a positional that may be left out
        return "optional"
    if action.default == argparse.SUPPRESS:
        if action.dest not in defaults:
            raise SystemExit(f"cli_docs: {command} {action.option_strings[0]} has no default and sets no config field")
        return show(defaults[action.dest])
    if action.default is None:
        return "—"
    return show(action.default)


def flag_of(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = " ".join(f"`{name}`" for name in action.option_strings)
    if isinstance(action, argparse.BooleanOptionalAction):
        return names
    if action.choices is not None:
        return f"{names} {{{', '.join(str(c) for c in action.choices)}}}"
    if action.nargs == 0:
        return names
    return f"{names} {action.metavar or action.dest.upper()}"


def help_of(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "default": action.default}
    return escape(" ".join(text.split()))


def escape(text: str) -> str:
    """Markdown-safe table text: `<text name>` would vanish as an HTML tag, `*.txt` could start emphasis."""
    for char, escaped in (("|", "\\|"), ("*", "\\*"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(char, escaped)
    return text


def table(actions: list[argparse.Action], defaults: dict[str, object], command: str) -> list[str]:
    lines = ["| flag | default | help |", "| --- | --- | --- |"]
    for action in actions:
        if isinstance(action, argparse._HelpAction):
            continue
        lines.append(f"| {flag_of(action)} | {default_of(action, defaults, command)} | {help_of(action)} |")
    return lines


def groups(parser: argparse.ArgumentParser) -> list[tuple[str, list[argparse.Action]]]:
    """(title, actions) for each group that has an action besides --help."""
    found = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if actions:
            # "optional arguments" is what Python before 3.10 calls "options": the page must not depend on it.
            title = "options" if group.title in (None, "optional arguments") else group.title
            found.append((title, actions))
    return found


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) for each command, in the order `charrnn --help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    raise SystemExit("cli_docs: the parser has no commands")


def synopsis(name: str, parser: argparse.ArgumentParser) -> str:
    words = ["charrnn", name]
    for action in parser._actions:
        if not action.option_strings:
            metavar = action.metavar or action.dest
            words.append(f"[{metavar}]" if action.nargs == "?" else metavar)
    return " ".join([*words, "[flags]"])


def render() -> str:
    from charrnn.cli import build_parser

    parser = build_parser()
    defaults = config_defaults()
    commands = subcommands(parser)
    out = [HEADER]
    out.append("| command | what it does |")
    out.append("| --- | --- |")
    out += [f"| [`charrnn {name}`](#charrnn-{name}) | {text} |" for name, text, _ in commands]
    out.append("")
    top = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    if top:
        out.append(f"`charrnn` itself: {escape(parser.description or '')}")
        out.append("")
        out += table(top, defaults, "charrnn")
        out.append("")
    for name, _text, sub in commands:
        out.append(f"## charrnn {name}")
        out.append("")
        out.append(escape(sub.description or ""))
        out.append("")
        out.append(f"    {synopsis(name, sub)}")
        out.append("")
        for title, actions in groups(sub):
            out.append(f"**{title[0].upper()}{title[1:]}**")
            out.append("")
            out += table(actions, defaults, name)
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(description="Write docs/cli.md from charrnn's parser.")
    arguments.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is out of date")
    args = arguments.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.is_file() else ""
        if current != text:
            print("docs/cli.md is out of date with the parser; run: python scripts/cli_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
