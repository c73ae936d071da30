"""The README's configuration table is the settings object, and its set-up commands are the
Makefile's and CI's."""

from __future__ import annotations

import re
from pathlib import Path

from streams.settings import SETTINGS, load_settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def readme_settings_table() -> list[tuple[str, str, str]]:
    table = README.split("<!-- settings-table:start -->")[1].split("<!-- settings-table:end -->")[0]
    rows = [line for line in table.strip().splitlines()[2:]]
    return [tuple(cell.strip().strip("`") for cell in row.strip("|").split("|")) for row in rows]


def test_configuration_table_equals_the_settings() -> None:
    expected = [(s.env, s.default, s.doc.replace("`", "")) for s in SETTINGS.values()]
    actual = [(env, default, doc.replace("`", "")) for env, default, doc in readme_settings_table()]
    assert actual == expected


def test_every_default_parses() -> None:
    settings = load_settings({})
    assert settings.as_env() == {s.env: s.default for s in SETTINGS.values()}


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"^make (\w+)", README.split("## Quick start")[1], flags=re.MULTILINE)
    assert commands[:2] == ["demo", "test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:.*\n\t@scripts/bootstrap\n\tpython3 -m pytest", makefile, re.MULTILINE)
    assert re.search(r"^demo:.*\n\t@scripts/bootstrap\n\tcpo demo", makefile, re.MULTILINE)
