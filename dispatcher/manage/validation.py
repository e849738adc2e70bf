"""Pure checks of what a user types, with messages that name the problem.

The database enforces the same rules with CHECK constraints (migration 002), so a plain SQL
insert cannot bypass them; these run first so the CLI and the API can say precisely what is
wrong.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from dispatcher.errors import DispatcherError
from dispatcher.settings import RETRY_POLICIES

MAX_URL_LENGTH = 2048
MAX_NAME_LENGTH = 200
# The database's CHECK constraint (migration 002) also accepts a name without a dot; the CLI
# asks for the dotted form the README documents, and accepts the looser one only to remove it.
EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+")
STORED_EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
# PostgreSQL's numeric, which jsonb uses for every number, holds no more digits than these.
MAX_INTEGER_DIGITS = 131072
MAX_FRACTION_DIGITS = 16383
# json.loads joins a valid pair of \u escapes into one character; what is left is unpaired.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ValidationError(DispatcherError):
    """Input that breaks a rule; the message names the field and the rule."""


class JsonSyntaxError(ValidationError):
    """Text that is not JSON at all (as opposed to JSON that PostgreSQL cannot store)."""


# Ids are PostgreSQL bigint identity values: never zero or negative.
MAX_ID = 2**63 - 1


def parse_id(text: str) -> int | None:
    """Return `text` as an id (ASCII digits, 1 to MAX_ID), or None when it cannot name a row."""
    if text.isascii() and text.isdigit() and len(text) <= 19:
        number = int(text)
        if 1 <= number <= MAX_ID:
            return number
    return None


def check_url(url: str) -> str:
    """Return the URL if it is http(s), has a host, no user-info, and fits the length cap."""
    url = url.strip()
    if not url:
        raise ValidationError("invalid URL: it is empty")
    check_text(url, "invalid URL: it", "PostgreSQL")
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError(f"invalid URL: longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() for c in url):
        raise ValidationError(f"invalid URL {url!r}: it contains whitespace")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"invalid URL {url!r}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError(f"invalid URL {url!r}: the scheme must be http or https")
    if parts.username is not None or "@" in parts.netloc:
        raise ValidationError(f"invalid URL {url!r}: user-info (user:password@) is not allowed")
    if not parts.hostname:
        raise ValidationError(f"invalid URL {url!r}: it has no host")
    if port == 0:
        raise ValidationError(f"invalid URL {url!r}: port 0 is not allowed")
    return url


def check_name(name: str) -> str:
    """Return the service name, trimmed, if it is 1 to 200 characters."""
    name = name.strip()
    if not name:
        raise ValidationError("invalid service name: it is empty")
    check_text(name, "invalid service name: it", "PostgreSQL")
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationError(f"invalid service name: longer than {MAX_NAME_LENGTH} characters")
    return name


def check_description(description: str) -> str:
    """Return the description if PostgreSQL can store it (it may be empty)."""
    check_text(description, "invalid description: it", "PostgreSQL")
    return description


def check_event_type(event_type: str, allow_star: bool = True, dotted: bool = True) -> str:
    """Return the event type if it is a dotted name (or `*` where allowed).

    With dotted=False a name without a dot passes too, as the database allows: for removing
    a subscription stored before the CLI asked for dots.
    """
    if allow_star and event_type == "*":
        return event_type
    pattern = EVENT_TYPE_RE if dotted else STORED_EVENT_TYPE_RE
    if not pattern.fullmatch(event_type):
        raise ValidationError(
            f"invalid event type {event_type!r}: use a dotted name of letters, digits, '_' and"
            " '-', such as customer.updated" + (", or *" if allow_star else "")
        )
    return event_type


def split_event_types(values: tuple[str, ...] | list[str], dotted: bool = True) -> list[str]:
    """Turn repeated and comma-separated options into a de-duplicated, ordered list."""
    seen: dict[str, None] = {}
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part:
                seen[check_event_type(part, dotted=dotted)] = None
    return list(seen)


def check_event_types(types: list[str]) -> list[str]:
    """Return the list if it is not empty and every type is valid."""
    if not types:
        raise ValidationError("the event type list is empty: give at least one type, or *")
    return [check_event_type(t) for t in types]


def parse_json(text: str, what: str = "--data") -> Any:
    """Parse JSON that PostgreSQL can store as jsonb, or say what is wrong with it.

    Stricter than the standard library: NaN and Infinity are not JSON, and jsonb holds no
    U+0000, no unpaired surrogate and no number beyond the range of its numeric type. Numbers
    come back as Decimal, exact; callers store the original text, as SQL would.
    """

    value = decode_json(text, what)
    check_storable(value, what)
    return value


def decode_json(text: str | bytes, what: str) -> Any:
    """Parse JSON text, numbers as exact Decimals; raise JsonSyntaxError if it is not JSON."""

    def reject_constant(name: str) -> Any:
        raise JsonSyntaxError(f"{what} is not valid JSON: {name} is not a JSON number")

    try:
        return json.loads(
            text, parse_constant=reject_constant, parse_float=Decimal, parse_int=Decimal
        )
    except json.JSONDecodeError as exc:
        raise JsonSyntaxError(f"{what} is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise JsonSyntaxError(f"{what} is not valid JSON: it is not UTF-8 text") from None
    except RecursionError:
        raise JsonSyntaxError(f"{what} nests arrays or objects too deeply") from None


def encode_json(value: Any) -> str:
    """Render what decode_json returns as compact JSON text, every number exactly as parsed.

    Iterative, like check_storable: whatever depth decode_json accepted, this renders.
    """
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Literal):
            out.append(item.text)
        elif isinstance(item, dict):
            parts: list[Any] = []
            for key, member in item.items():
                parts += [_Literal("," if parts else ""), _Literal(json.dumps(key) + ":"), member]
            stack += [_Literal("}"), *reversed(parts)]
            out.append("{")
        elif isinstance(item, list):
            parts = []
            for element in item:
                parts += [_Literal("," if parts else ""), element]
            stack += [_Literal("]"), *reversed(parts)]
            out.append("[")
        elif isinstance(item, Decimal):
            out.append(str(item))
        else:
            out.append(json.dumps(item))
    return "".join(out)


class _Literal:
    """Text encode_json copies to its output as it is."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def check_storable(value: Any, what: str) -> None:
    """Raise if jsonb cannot hold `value`; walk with a stack, as JSON may nest deeply."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            check_text(item, what)
        elif isinstance(item, Decimal):
            _check_number(item, what)


def check_text(text: str, what: str, store: str = "PostgreSQL jsonb") -> None:
    """Raise if `store` cannot hold the text: it has a NUL or an unpaired surrogate."""
    if "\x00" in text:
        raise ValidationError(
            f"{what} contains \\u0000 (the NUL character), which {store} cannot store"
        )
    surrogate = _SURROGATE_RE.search(text)
    if surrogate:
        raise ValidationError(
            f"{what} contains an unpaired surrogate \\u{ord(surrogate[0]):04x}, which is not a"
            f" Unicode character and which {store} cannot store"
        )


def _check_number(number: Decimal, what: str) -> None:
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # parse_float and parse_int never make NaN or Infinity
    if number.adjusted() >= MAX_INTEGER_DIGITS or -exponent > MAX_FRACTION_DIGITS:
        raise ValidationError(
            f"{what} holds a number PostgreSQL jsonb cannot store: at most"
            f" {MAX_INTEGER_DIGITS} digits before the decimal point and {MAX_FRACTION_DIGITS}"
            " after it"
        )


def parse_duration(text: str) -> timedelta:
    """Parse '90s', '15m', '2h', '7d', '1w' or a combination such as '1h30m'."""
    compact = text.strip().lower().replace(" ", "")
    pos = 0
    total = 0.0
    for match in _DURATION_RE.finditer(compact):
        if match.start() != pos:
            break
        total += float(match[1]) * _UNITS[match[2]]
        pos = match.end()
    if not compact or pos != len(compact):
        raise ValidationError(f"invalid duration {text!r}: use forms like 90s, 15m, 2h, 7d")
    return check_window(total, f"duration {text!r}")


# Far enough back for any log, and well inside what PostgreSQL's interval and timestamptz hold.
MAX_WINDOW = timedelta(days=36525)


def check_window(seconds: float, what: str) -> timedelta:
    """Return a look-back period of `seconds` if it is from 0 to 100 years."""
    if not 0 <= seconds <= MAX_WINDOW.total_seconds():  # NaN fails this too
        raise ValidationError(f"invalid {what}: give from 0 seconds to 100 years")
    return timedelta(seconds=seconds)


# The database's CHECK constraint on webhooks.rate_limit (migration 007).
MAX_RATE_LIMIT = 100000.0


def check_rate_limit(value: object, what: str = "rate_limit") -> float:
    """Return a rate limit in requests per second: a number above 0 and at most 100000.

    Takes the text a person typed or a number from JSON; `what` names the field in the message.
    """
    shown = repr(value) if isinstance(value, str) else str(value)
    number = math.nan
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value.strip())
    elif isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValidationError(
            f"{what} must be a number of requests per second greater than 0, got {shown}"
        )
    if number > MAX_RATE_LIMIT:
        raise ValidationError(
            f"{what} must be at most {MAX_RATE_LIMIT:g} requests per second, got {shown}"
        )
    return number


# The database's CHECK constraint on webhooks.max_concurrency (migration 009).
MAX_CONCURRENCY = 1000


def check_max_concurrency(value: object, what: str = "max_concurrency") -> int:
    """Return a concurrency cap: a whole number of attempts in flight from 1 to 1000.

    Takes the text a person typed or an integer from JSON; `what` names the field in the message.
    """
    shown = repr(value) if isinstance(value, str) else str(value)
    number: int | None = None
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,9}\s*", value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        number = int(value)
    if number is None or not 1 <= number <= MAX_CONCURRENCY:
        raise ValidationError(
            f"{what} must be a whole number of attempts in flight from 1 to {MAX_CONCURRENCY},"
            f" got {shown}"
        )
    return number


def check_retry_policy(value: object, what: str = "retry_policy", default: str = "null") -> str:
    """Return a named retry policy; `default` is how the surface says "the daemon's default"."""
    if isinstance(value, str) and value in RETRY_POLICIES:
        return value
    shown = repr(value) if isinstance(value, str) else str(value)
    raise ValidationError(
        f"{what} must be {' or '.join(RETRY_POLICIES)}, or {default} for the daemon's default"
        f" policy, got {shown}"
    )
