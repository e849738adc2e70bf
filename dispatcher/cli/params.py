"""Option and argument types: a value that does not parse is a usage error (exit code 2)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from dispatcher.manage.validation import MAX_ID, ValidationError, parse_duration, parse_json


class IdType(click.ParamType[int]):
    """A webhook or delivery id: a whole number from 1 to the bigint maximum."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            number = value
        else:
            text = str(value).strip()
            try:
                number = int(text)
            except ValueError:
                # int() also refuses more than 4300 digits: that is a number, only too big.
                if not text.lstrip("+-").isdigit():
                    self.fail(f"{value!r} is not a valid integer.", param, ctx)
                number = MAX_ID + 1
        if not 1 <= number <= MAX_ID:
            self.fail(f"{value} is out of range: ids run from 1 to {MAX_ID}.", param, ctx)
        return number


@dataclass(frozen=True)
class Duration:
    """A duration as typed (for echoing back) and as a timedelta."""

    text: str
    delta: timedelta


class DurationType(click.ParamType["Duration"]):
    """'90s', '15m', '2h', '7d', '1w' or a combination; '0' too where `allow_zero`."""

    name = "duration"

    def __init__(self, allow_zero: bool = False, maximum: timedelta | None = None) -> None:
        self.allow_zero = allow_zero
        self.maximum = maximum

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Duration:
        if isinstance(value, Duration):
            return value
        text = str(value)
        if self.allow_zero and text.strip() == "0":
            return Duration(text, timedelta(0))
        try:
            delta = parse_duration(text)
        except ValidationError as exc:
            self.fail(str(exc), param, ctx)
        if self.maximum is not None and delta > self.maximum:
            hours = self.maximum.total_seconds() / 3600
            self.fail(f"{text!r} is too long: at most {hours:g}h", param, ctx)
        return Duration(text, delta)


class JsonType(click.ParamType[str]):
    """JSON text that PostgreSQL can store as jsonb, given inline, as @PATH, or as - (stdin).

    A command-line argument cannot carry much more than 128 KiB; a file or stdin can.
    Converts to the text itself, unchanged, for PostgreSQL to store.
    """

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if text == "-":
            source = "standard input"
            text = sys.stdin.read()
        elif text.startswith("@"):
            path = Path(text[1:])
            source = str(path)
            try:
                # utf-8-sig: a byte-order mark some editors write is not part of the JSON.
                text = path.read_text(encoding="utf-8-sig")
            except OSError as exc:
                self.fail(f"cannot read {path}: {exc.strerror or exc}", param, ctx)
            except UnicodeDecodeError:
                self.fail(f"cannot read {path}: it is not UTF-8 text", param, ctx)
        else:
            source = "the value"
        try:
            parse_json(text, what=source)
        except ValidationError as exc:
            self.fail(str(exc), param, ctx)
        return text


def split_values(values: tuple[str, ...] | list[str]) -> list[str]:
    """Turn repeated and comma-separated option values into one list, blanks dropped."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


ID = IdType()
DURATION = DurationType()
JSON = JsonType()
