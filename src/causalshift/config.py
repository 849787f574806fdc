"""Dataclass configs as CLI options: each field's `help` metadata becomes its `--help` line.

    @dataclass(frozen=True)
    class MyConfig:
        seq_len: int = option(128, "Tokens per sequence.")

    add_config_arguments(parser, MyConfig)       # adds --seq-len
    overrides = config_overrides(MyConfig, args)  # only the options the user gave
    cfg = dataclasses.replace(MyConfig(), **overrides)

Validation lives in each config's `__post_init__` and raises `UserError`. Numbers are
checked once, from the field's bounds: `option(0.1, "...", ge=0, lt=1)` declares them and
`check_fields(self)`, called first thing in `__post_init__`, refuses anything that is not a
finite number of the field's type within them (`inf`, `nan`, `-1`, `true`, `"3"`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from causalshift.errors import UserError


def option(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    cli: bool = True,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    **argparse_kwargs: Any,
) -> Any:
    """A dataclass field with CLI help. `parse` converts the command-line string; `ge`,
    `gt`, `le`, `lt` bound a number (or each number of a tuple), see `check_fields`."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"help": help, "parse": parse, "cli": cli, "argparse": argparse_kwargs}
    meta["bounds"] = bounds
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


def _bounds_text(ge: Any = None, gt: Any = None, le: Any = None, lt: Any = None) -> str:
    """'>= 0', '> 0', 'in [0, 1)', ... ('' without bounds)."""
    low = (f"[{ge}" if ge is not None else f"({gt}") if ge is not None or gt is not None else ""
    high = (f"{le}]" if le is not None else f"{lt})") if le is not None or lt is not None else ""
    if low and high:
        return f"in {low}, {high}"
    if low:
        return (">= " if ge is not None else "> ") + low[1:]
    if high:
        return ("<= " if le is not None else "< ") + high[:-1]
    return ""


def check_number(name: str, value: Any, *, integer: bool = False, **bounds: Any) -> None:
    """Raise a one-line UserError unless `value` is a finite number (an int, not a bool, if
    `integer`) within `bounds` (`ge`, `gt`, `le`, `lt`)."""
    text = _bounds_text(**bounds)
    if integer:
        what = "a positive integer" if bounds == {"ge": 1} else f"an integer {text}".strip()
        ok_type = isinstance(value, int) and not isinstance(value, bool)
    else:
        what = text or "a finite number"
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok_type:
        kind = what if integer else f"a number {text}".strip()
        raise UserError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number {text}".rstrip() + f", got {value}")
    ge, gt, le, lt = (bounds.get(k) for k in ("ge", "gt", "le", "lt"))
    if (
        (ge is not None and not value >= ge)
        or (gt is not None and not value > gt)
        or (le is not None and not value <= le)
        or (lt is not None and not value < lt)
    ):
        raise UserError(f"{name} must be {what}, got {value!r}")


@functools.cache
def _numeric_fields(cls: type) -> tuple[tuple[str, type, bool, bool, dict[str, Any]], ...]:
    """(name, int or float, is a tuple of them, None allowed, bounds) of `cls`'s number fields."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp, args = hints[f.name], typing.get_args(hints[f.name])
        optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
        tp = _base_type(tp)
        each = typing.get_origin(tp) is tuple
        if each:
            tp = typing.get_args(tp)[0]
        if tp in (int, float):
            out.append((f.name, tp, each, optional, dict(f.metadata.get("bounds", {}))))
    return tuple(out)


def check_fields(obj: Any, *, as_options: bool = False) -> None:
    """Check every int/float field of dataclass `obj` (and each item of a tuple of them)
    with `check_number` and the field's bounds; None passes where the type allows it.
    Errors name the field (`max_steps`) or, with `as_options`, its option (`--max-steps`)."""
    for name, tp, each, optional, bounds in _numeric_fields(type(obj)):
        value = getattr(obj, name)
        if value is None and optional:
            continue
        shown = "--" + name.replace("_", "-") if as_options else name
        if each and not isinstance(value, (tuple, list)):
            raise UserError(f"{shown} must be a list of numbers, got {value!r}")
        for v in value if each else (value,):
            check_number(shown, v, integer=tp is int, **bounds)
