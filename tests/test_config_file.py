"""The documented example config is complete and loads to exactly the defaults."""

from __future__ import annotations

import tomllib
from pathlib import Path

from dispatcher.settings import Settings, load_settings

EXAMPLE = Path(__file__).parent.parent / "config" / "dispatcher.toml"


def test_example_config_loads_to_the_defaults() -> None:
    assert load_settings(EXAMPLE, env={}) == Settings()


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    documented = set(tomllib.loads(text)) | {
        "database_url",
        "egress_proxy",
        "bind_address",
        "metrics_listen",
    }
    keys = {name for name in Settings.__dataclass_fields__ if not name.startswith("_")}
    assert documented == keys
    for commented in ("database_url", "egress_proxy", "bind_address", "metrics_listen"):
        assert f"# {commented} = " in text
