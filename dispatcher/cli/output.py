"""How the CLI prints: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import orjson


def emit_json(value: Any) -> None:
    """Print `value` as indented JSON; datetimes are ISO-8601 UTC, UUIDs strings."""
    click.echo(orjson.dumps(value, default=_default, option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z))


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def plain(record: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """Pick `fields` from a record into a JSON-ready dict."""
    out: dict[str, Any] = {}
    for name in fields:
        value = record[name]
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, str) and name in ("payload", "sample") and value is not None:
            value = orjson.loads(value)
        out[name] = value
    return out


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print rows as left-aligned columns under upper-case headers."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    click.echo(line.rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """Print `label: value` lines with the values aligned."""
    width = max(len(label) for label, _ in pairs) + 1
    for label, value in pairs:
        click.echo(f"{(label + ':').ljust(width)} {cell(value)}")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def shorten(text: str | None, limit: int) -> str:
    if text is None:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
