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
from causalshift.io import disk_error

COMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("causalshift.lens.command", "measure the causal shift in pretrained causal LMs"),
    "view": ("causalshift.lens.view", "the per-token logit-lens picture of one prompt"),
    "intervene": ("causalshift.lens.intervene_command", "attenuate one residual at test time"),
    "fit-lens": ("causalshift.lens.fit_command", "train a tuned lens (one translator per layer)"),
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


def _glue_text_options(argv: list[str], command: str | None) -> list[str]:
    """`--opt VALUE` -> `--opt=VALUE` for the command's free-text options (its module's
    TEXT_OPTIONS): argparse would read a VALUE such as "--no-compile" as an option."""
    if command is None:
        return argv
    names = getattr(importlib.import_module(COMMANDS[command][0]), "TEXT_OPTIONS", ())
    out, i = [], 0
    while i < len(argv):
        if argv[i] in names and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        parser = build_parser(command)
        args = parser.parse_args(_glue_text_options(argv, command))
        if args.command is None:
            parser.print_help()
            return 2
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except UserError as e:
        print(f"causalshift {command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, quota or read-only folder in a write not wrapped
        reason = disk_error(e)
        if reason is None:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"causalshift {command}: error: {reason}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"causalshift {command}: interrupted", file=sys.stderr)
        return 130
