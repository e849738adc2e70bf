"""JSON in and out for the API: request bodies, path and query values, and responses.

A body that is not JSON is a 400; a body that is JSON but not the object a route expects (a
missing field, a wrong type, an unknown field) is a 422 whose detail and `field` name the
field. A path id that cannot name anything (not a number, beyond bigint, not a UUID) is a 404,
as an id that names nothing is.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable, Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from dispatcher.manage.validation import (
    MAX_ID,
    ValidationError,
    check_storable,
    check_text,
    check_window,
    decode_json,
    encode_json,
    parse_duration,
    parse_id,
)
from dispatcher.web.problems import Problem

JSON_TYPES = ("application/json",)
# Columns that hold jsonb as text: sent on as JSON values, never as strings.
JSON_COLUMNS = frozenset({"payload", "sample"})


def respond(
    value: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response: datetimes ISO-8601 UTC, UUIDs strings."""
    return web.Response(
        status=status,
        body=orjson.dumps(value, default=_default, option=orjson.OPT_UTC_Z),
        content_type="application/json",
        headers=headers,
    )


def _default(value: Any) -> Any:
    # asyncpg's own UUID class, which orjson does not take for a uuid.UUID.
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def pick(record: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Take `names` from a record; jsonb text columns become JSON values, as stored."""
    out: dict[str, Any] = {}
    for name in names:
        value = record[name]
        if name in JSON_COLUMNS and isinstance(value, str):
            # PostgreSQL rendered it, so it is JSON; a Fragment keeps every digit of a number.
            value = orjson.Fragment(value)
        out[name] = value
    return out


def field_problem(field: str, detail: str) -> Problem:
    return Problem(422, detail, field=field)


class Body:
    """A request's JSON object, read field by field with a problem naming any bad field."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    @classmethod
    async def read(cls, request: web.Request, allowed: Iterable[str]) -> Body:
        """Read the body as a JSON object with only `allowed` fields; no body reads as {}."""
        raw = await request.read()
        if not raw.strip():
            return cls({})
        if request.content_type not in JSON_TYPES and not request.content_type.endswith("+json"):
            raise Problem(415, "send the request body as JSON (Content-Type: application/json)")
        value = decode_json(raw, "the request body")
        if not isinstance(value, dict):
            raise Problem(422, "the request body must be a JSON object")
        known = set(allowed)
        for name in value:
            if name not in known:
                raise field_problem(
                    name, f"unknown field {name!r}: expected {', '.join(sorted(known))}"
                )
        return cls(value)

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def _get(self, name: str, required: bool) -> Any:
        if required and name not in self.fields:
            raise field_problem(name, f"the field {name!r} is required")
        return self.fields.get(name)

    def string(self, name: str, required: bool = False) -> str | None:
        value = self._get(name, required)
        if value is None and name not in self:
            return None
        if not isinstance(value, str):
            raise field_problem(name, f"the field {name!r} must be a string")
        return value

    def required_string(self, name: str) -> str:
        value = self.string(name, required=True)
        assert value is not None
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        if name not in self:
            return default
        value = self.fields[name]
        if not isinstance(value, bool):
            raise field_problem(name, f"the field {name!r} must be true or false")
        return value

    def string_list(self, name: str) -> list[str] | None:
        if name not in self:
            return None
        value = self.fields[name]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise field_problem(name, f"the field {name!r} must be an array of strings")
        return value

    def id(self, name: str) -> int | None:
        return None if name not in self else whole_id(name, self.fields[name])

    def period(self, name: str, default: float | None = None) -> timedelta:
        """A look-back period: a number of seconds, or a duration such as "24h" or "1h30m"."""
        if name not in self and default is not None:
            return check_window(default, name)
        return period(name, self._get(name, required=True))

    def uuid(self, name: str) -> uuid.UUID | None:
        value = self.string(name)
        if value is None:
            return None
        try:
            return uuid.UUID(value)
        except ValueError:
            raise field_problem(name, f"the field {name!r} must be a UUID") from None

    def json_text(self, name: str, required: bool = False) -> str | None:
        """Any JSON value jsonb can store, as text with its numbers exactly as sent."""
        if name not in self:
            self._get(name, required)
            return None
        value = self.fields[name]
        try:
            check_storable(value, f"the field {name!r}")
        except ValidationError as exc:
            raise field_problem(name, str(exc)) from None
        return encode_json(value)


def whole_id(name: str, value: Any) -> int:
    """An id from a JSON number: a whole number from 1 to the bigint maximum."""
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        number = int(value)
        if 1 <= number <= MAX_ID:
            return number
    raise field_problem(
        name, f"the field {name!r} must be an id: a whole number from 1 to {MAX_ID}"
    )


def period(name: str, value: Any) -> timedelta:
    """A look-back period from a number of seconds or a duration string such as "24h"."""
    if isinstance(value, Decimal):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            try:
                return parse_duration(value)
            except ValidationError as exc:
                raise field_problem(name, f"{name}: {exc}") from None
    else:
        raise field_problem(name, f"{name!r} must be a number of seconds or a duration such as 24h")
    try:
        return check_window(seconds, name)
    except ValidationError as exc:
        raise field_problem(name, str(exc)) from None


def path_id(request: web.Request, name: str, what: str) -> int:
    """A bigint id from the path; anything else names nothing, so 404."""
    text = request.match_info[name]
    number = parse_id(text)
    if number is not None:
        return number
    raise Problem(404, f"{what} {text!r} does not exist: ids are whole numbers from 1 to {MAX_ID}")


def path_uuid(request: web.Request, name: str, what: str) -> uuid.UUID:
    text = request.match_info[name]
    try:
        return uuid.UUID(text)
    except ValueError:
        raise Problem(404, f"{what} {text!r} does not exist: ids are UUIDs") from None


def query_id(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    number = parse_id(text)
    if number is not None:
        return number
    raise field_problem(name, f"the parameter {name!r} must be an id from 1 to {MAX_ID}")


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if text.isascii() and text.isdigit() and len(text) <= 6 and low <= int(text) <= high:
        return int(text)
    raise field_problem(name, f"the parameter {name!r} must be a whole number from {low} to {high}")


def query_period(request: web.Request, name: str, default: str | None = None) -> timedelta | None:
    text = request.query.get(name, default)
    return None if text is None else period(name, text)


def query_text(request: web.Request, name: str) -> str | None:
    text = request.query.get(name)
    if text is not None:
        try:
            check_text(text, f"the parameter {name!r}", "PostgreSQL")
        except ValidationError as exc:
            raise field_problem(name, str(exc)) from None
    return text


def encode_cursor(last_id: int) -> str:
    """An opaque page cursor: base64url of "d" and the last id the page held."""
    return base64.urlsafe_b64encode(f"d{last_id}".encode()).decode().rstrip("=")


def decode_cursor(request: web.Request, name: str = "cursor") -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raw = ""
    number = parse_id(raw[1:]) if raw.startswith("d") else None
    if number is not None:
        return number
    raise field_problem(name, "the cursor is not one this API gave out: use next_cursor as sent")
