"""The README states facts the code owns; these tests keep the two equal."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config import settings_markdown_table
from workers.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _table_in_readme() -> str:
    match = re.search(r"<!-- settings-table:start -->\n(.*?)\n?<!-- settings-table:end -->", README, re.S)
    assert match, "README lost its settings-table markers"
    return match.group(1).strip()


def test_readme_configuration_table_equals_the_settings_in_code() -> None:
    assert _table_in_readme() == settings_markdown_table().strip(), (
        "README configuration table is stale: run `guardstream config --update-readme README.md`"
    )


def test_readme_quick_start_is_the_two_make_targets_that_exist() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no '{target}' target"


def test_every_command_the_readme_lists_is_registered() -> None:
    listed = set(re.findall(r"^guardstream (\w[\w-]*)", README, re.M))
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    registered = set(sub.choices)  # type: ignore[arg-type]
    assert listed <= registered, f"README lists commands the CLI lacks: {listed - registered}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci
