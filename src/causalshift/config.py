"""Dataclass configs as CLI options: each field's `help` metadata becomes its `--help` line.

    @dataclass(frozen=True)
    class MyConfig:
        seq_len: int = option(128, "Tokens per sequence.")

    add_config_arguments(parser, MyConfig)       # adds --seq-len
    overrides = config_overrides(MyConfig, args)  # only the options the user gave
    cfg = dataclasses.replace(MyConfig(), **overrides)

Validation lives in each config's `__post_init__` and raises `UserError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any


def option(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    cli: bool = True,
    **argparse_kwargs: Any,
) -> Any:
    """A dataclass field with CLI help. `parse` converts the command-line string."""
    meta = {"help": help, "parse": parse, "cli": cli, "argparse": argparse_kwargs}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def int_list(text: str) -> tuple[int, ...]:
    """Parse '1,5' into (1, 5)."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def str_list(text: str) -> tuple[str, ...]:
    """Parse 'a,b' into ('a', 'b')."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _base_type(tp: Any) -> Any:
    """`int | None` -> int; other types unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()
) -> None:
    """Add one `--kebab-name` option per field of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in exclude or not meta.get("cli", True):
            continue
        kwargs: dict[str, Any] = dict(meta.get("argparse", {}))
        kwargs.setdefault("dest", f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = meta.get("help", "")
        tp = _base_type(hints[f.name])
        if tp is bool and "action" not in kwargs:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif "action" not in kwargs:
            kwargs["type"] = meta.get("parse") or (tp if tp in (int, float, str) else str)
        if default not in (None, (), [], False) and "default" not in kwargs:
            shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
            help_text = f"{help_text} (default: {shown})"
        kwargs["help"] = help_text
        kwargs.setdefault("default", argparse.SUPPRESS)
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_overrides(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of `cls` that the user set on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}
