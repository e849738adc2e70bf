"""A non-editable install (the service's `pip install`) must carry every non-Python file the
package reads at run time: SQL, migrations, templates and static files."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dispatcher"


def test_package_data_covers_every_file_read_at_run_time() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["dispatcher"]
    shipped = {p for pattern in patterns for p in PACKAGE.glob(pattern)}
    needed = {
        p
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert needed, "no data files found: the test looks in the wrong place"
    assert {p.relative_to(PACKAGE) for p in needed - shipped} == set()
