"""Every console example in the README shows what its command prints (see readme_session)."""

from __future__ import annotations

import pytest

from tests.readme_session import README, Example, blocks, normalize, parse, session

pytestmark = pytest.mark.slow


def test_every_console_example_prints_what_the_readme_shows() -> None:
    examples = [e for block in blocks(README.read_text()) for e in block]
    assert len(examples) > 10
    with session() as s:
        for example in examples:
            shown = s.run(example.command)
            assert normalize(shown) == normalize(example.output), (
                f"$ {example.command}\n--- README ---\n{example.output}\n--- actual ---\n{shown}"
            )


@pytest.mark.parametrize(
    ("readme", "actual"),
    [
        ("id: 7f1c0d5e-0000-4000-8000-000000000001", "id: 0a1b2c3d-1111-4111-8111-111111111111"),
        ("created:  2026-11-29 04:31:22", "created: 2026-12-01 10:00:00"),
        ("secret: whsec_abc+/=", "secret: whsec_xyz"),
        ("Response 200 (delivered) in 1 ms", "Response 200 (delivered) in 13 ms"),
        ("oldest due:  0.6s", "oldest due: 12s"),
    ],
)
def test_normalize_hides_what_changes_between_runs(readme: str, actual: str) -> None:
    assert normalize(readme) == normalize(actual)


@pytest.mark.parametrize(
    ("readme", "actual"),
    [
        ("Webhook 2 is disabled.", "Webhook 2 is disabled; 1 pending deliveries cancelled."),
        ("3   failed  3   503", "3   failed  2   503"),
        ("Published <x> to 1 webhook(s).", "Published <x> to 0 webhook(s)."),
    ],
)
def test_normalize_keeps_what_a_command_decides(readme: str, actual: str) -> None:
    assert normalize(readme) != normalize(actual)


def test_parse_splits_commands_from_their_output() -> None:
    block = "$ dispatcher a\none\ntwo\n\n$ dispatcher b\n\n$ dispatcher c\nthree\n"
    assert parse(block) == [
        Example("dispatcher a", "one\ntwo"),
        Example("dispatcher b", ""),
        Example("dispatcher c", "three"),
    ]
