"""How the console says things: times, durations, counts, error kinds, and readable JSON.

Pure functions, registered as Jinja filters by console_render.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

ERROR_LABELS = {
    "status": "HTTP error",
    "timeout": "Timed out",
    "dns": "DNS lookup failed",
    "connect": "Could not connect",
    "tls": "TLS error",
    "connection_reset": "Connection reset",
    "bad_response": "Malformed response",
    "blocked_address": "Blocked address",
    "invalid_url": "Invalid URL",
    "network": "Network error",
    "internal": "Internal error",
    "webhook_disabled": "Webhook disabled",
    "webhook_deleted": "Webhook deleted",
}
INDENT = "  "


def when(moment: datetime | None) -> str:
    """Format a timestamp in UTC, to the second."""
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """Say how long ago `moment` was, roughly ("3 min ago")."""
    if moment is None:
        return "—"
    return age(((now or datetime.now(UTC)) - moment).total_seconds()) + " ago"


def until(moment: datetime | None, now: datetime | None = None) -> str:
    """Say how soon `moment` comes ("in 3 min"), or "due now" once it has passed."""
    if moment is None:
        return "—"
    seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return "due now" if seconds < 1 else "in " + age(seconds)


def age(seconds: float | None) -> str:
    """Say a duration roughly, in its largest whole unit: 42 s, 5 min, 3 h, 2 d."""
    if seconds is None:
        return "—"
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{count:,} {word}"


def grace_words(grace: timedelta) -> str:
    hours = grace.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 48 else plural(int(hours), "hour")


def error_label(kind: str | None) -> str:
    """Name an attempt's error kind in words."""
    if not kind:
        return ""
    return ERROR_LABELS.get(kind, kind.replace("_", " ").capitalize())


def json_pretty(text: str | None) -> str:
    """Indent JSON text for reading, token for token; anything else comes back as it was.

    Re-serializing would show a different document from the one sent: 1.10 would read 1.1 and
    a large integer would lose digits. So only whitespace between tokens changes here.
    """
    if not text:
        return ""
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return text
    out: list[str] = []
    depth = 0
    in_string = escaped = False
    for index, char in enumerate(text):
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif char in "{[":
            depth += 1
            closing = _next_token(text, index + 1)
            out.append(char if closing in "}]" else char + "\n" + INDENT * depth)
        elif char in "}]":
            depth -= 1
            if out and out[-1] not in "{[":
                out.append("\n" + INDENT * depth)
            out.append(char)
        elif char == ",":
            out.append(",\n" + INDENT * depth)
        elif char == ":":
            out.append(": ")
        elif not char.isspace():
            out.append(char)
    return "".join(out)


def _next_token(text: str, start: int) -> str:
    """The first character at or after `start` that is not whitespace."""
    for char in text[start:]:
        if not char.isspace():
            return char
    return ""
