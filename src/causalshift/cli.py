"""The one entry point: `causalshift SUBCOMMAND ...`.

Each subcommand lives in its own module, imported only when it runs, with two functions:
`add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from causalshift import __version__
from causalshift.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("causalshift.lens.command", "measure the causal shift in pretrained causal LMs"),
    "prepare": ("causalshift.train.prepare", "tokenize text into GPT-2 token shards"),
    "train": ("causalshift.train.command", "train a GPT-2-style model with residual attenuation"),
    "sweep": ("causalshift.train.sweep", "train the baseline and a fixed cut at each layer"),
    "eval": ("causalshift.evaluate.command", "zero-shot benchmarks through lm-evaluation-harness"),
    "export": ("causalshift.evaluate.export", "export a run directory as a Hugging Face folder"),
    "report": ("causalshift.report.command", "build a Markdown/HTML report from result files"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and one line on bad arguments (its default too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s module is imported."""
    parser = _Parser(prog="causalshift", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"causalshift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except UserError as e:
        print(f"causalshift {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"causalshift {command}: interrupted", file=sys.stderr)
        return 130
