"""How the console words things: pure functions, checked against tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dispatcher.web.console_auth import local_path
from dispatcher.web.console_text import age, ago, error_label, grace_words, json_pretty, until

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "pretty"),
    [
        ('{"a":1}', '{\n  "a": 1\n}'),
        (
            '{"price": 1.10, "big": 123456789012345678901234567890}',
            '{\n  "price": 1.10,\n  "big": 123456789012345678901234567890\n}',
        ),
        (
            '{"a": [], "b": {}, "c": [1, [2]]}',
            '{\n  "a": [],\n  "b": {},\n  "c": [\n    1,\n    [\n      2\n    ]\n  ]\n}',
        ),
        ('{"s": "a, b: {c} [d] \\" e"}', '{\n  "s": "a, b: {c} [d] \\" e"\n}'),
        ('"just a string"', '"just a string"'),
        ("[]", "[]"),
        ("not json {", "not json {"),
        ("<html><b>hi</b></html>", "<html><b>hi</b></html>"),
        ("", ""),
        (None, ""),
    ],
)
def test_json_is_indented_without_touching_a_token(text: str | None, pretty: str) -> None:
    assert json_pretty(text) == pretty


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (None, "—"),
        (-5, "0 s"),
        (0, "0 s"),
        (59.9, "59 s"),
        (60, "1 min"),
        (3599, "59 min"),
        (3600, "1 h"),
        (86399, "23 h"),
        (86400, "1 d"),
        (10 * 86400, "10 d"),
    ],
)
def test_durations_are_said_in_their_largest_unit(seconds: float | None, words: str) -> None:
    assert age(seconds) == words


def test_times_relative_to_now() -> None:
    assert ago(NOW - timedelta(minutes=3), NOW) == "3 min ago"
    assert ago(None, NOW) == "—"
    assert until(NOW + timedelta(hours=2), NOW) == "in 2 h"
    assert until(NOW - timedelta(seconds=30), NOW) == "due now"


@pytest.mark.parametrize(
    ("grace", "words"),
    [
        (timedelta(hours=1), "1 hour"),
        (timedelta(hours=24), "24 hours"),
        (timedelta(days=7), "7 days"),
    ],
)
def test_grace_periods(grace: timedelta, words: str) -> None:
    assert grace_words(grace) == words


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        ("status", "HTTP error"),
        ("timeout", "Timed out"),
        ("something_new", "Something new"),
        (None, ""),
    ],
)
def test_error_kinds_in_words(kind: str | None, label: str) -> None:
    assert error_label(kind) == label


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/deliveries?status=failed", "/deliveries?status=failed"),
        ("/webhooks/3", "/webhooks/3"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/a b", "/"),
        ("/caf\u00e9", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_sign_in_returns_only_to_a_path_on_this_site(target: str | None, path: str) -> None:
    assert local_path(target) == path
