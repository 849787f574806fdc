"""Numbers are checked once, from each field's bounds, in every command's config."""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass

import pytest

from causalshift.config import (
    add_config_arguments,
    check_fields,
    check_number,
    config_overrides,
    option,
)
from causalshift.errors import UserError


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (math.inf, {"ge": 0}, "x must be a finite number >= 0, got inf"),
        (math.nan, {}, "x must be a finite number, got nan"),
        (-1, {"ge": 0}, "x must be >= 0, got -1"),
        (0.0, {"gt": 0}, "x must be > 0, got 0.0"),
        (1.0, {"ge": 0, "lt": 1}, "x must be in [0, 1), got 1.0"),
        (1.5, {"gt": 0, "le": 1}, "x must be in (0, 1], got 1.5"),
        ("3", {"gt": 0}, "x must be a number > 0, got '3'"),
        (True, {}, "x must be a number, got True"),
        (0, {"integer": True, "ge": 1}, "x must be a positive integer, got 0"),
        (2.0, {"integer": True, "ge": 1}, "x must be a positive integer, got 2.0"),
        (-1, {"integer": True, "ge": 0}, "x must be an integer >= 0, got -1"),
        (9, {"integer": True, "ge": 0, "le": 8}, "x must be an integer in [0, 8], got 9"),
    ],
)
def test_check_number_messages(value, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError) as e:
        check_number("x", value, **kwargs)
    assert str(e.value) == message


def test_check_number_accepts_values_in_range() -> None:
    check_number("x", 0, ge=0)
    check_number("x", 3, gt=0)  # an int where a float is expected
    check_number("x", 0.5, gt=0, lt=1)
    check_number("x", 2**32 - 1, integer=True, ge=0, le=2**32 - 1)


@dataclass(frozen=True)
class Example:
    rate: float = option(0.1, "A rate.", ge=0, le=1)
    count: int | None = option(None, "A count.", ge=1)
    ks: tuple[int, ...] = option((1, 5), "Some k.", ge=1)
    name: str = option("a", "Not a number.")

    def __post_init__(self) -> None:
        check_fields(self, as_options=True)


def test_check_fields_reads_the_bounds_of_every_number_field() -> None:
    Example()
    Example(count=3, ks=(2,))
    for changes, message in (
        ({"rate": math.inf}, "--rate must be a finite number in [0, 1], got inf"),
        ({"count": 0}, "--count must be a positive integer, got 0"),
        ({"ks": (1, 0)}, "--ks must be a positive integer, got 0"),
        ({"ks": 3}, "--ks must be a list of numbers, got 3"),
    ):
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
            Example(**changes)


def test_bounds_are_not_argparse_options() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Example)
    args = parser.parse_args(["--rate", "0.5", "--count", "2"])
    assert config_overrides(Example, args) == {"rate": 0.5, "count": 2}


def _number_fields(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [
        f.name
        for f in dataclasses.fields(cls)
        if any(t in (int, float) for t in (hints[f.name], *typing.get_args(hints[f.name])))
    ]


def _configs() -> list[tuple[type, dict]]:
    from causalshift.evaluate.command import EvalConfig
    from causalshift.gpt.config import GPTConfig, ResidualConfig
    from causalshift.lens.command import AnalyzeConfig
    from causalshift.train.config import TrainConfig
    from causalshift.train.prepare import PrepareConfig

    return [
        (AnalyzeConfig, {}),
        (EvalConfig, {}),
        (PrepareConfig, {}),
        (TrainConfig, {}),
        (GPTConfig, {}),
        (ResidualConfig, {}),
    ]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_no_config_takes_a_non_finite_number(bad: float) -> None:
    """Every int/float field of every command's config refuses nan and +-inf."""
    checked = 0
    for cls, base in _configs():
        for name in _number_fields(cls):
            with pytest.raises(UserError, match=name.replace("_", "[_-]")):
                cls(**base, **{name: bad})
            checked += 1
    assert checked >= 30
