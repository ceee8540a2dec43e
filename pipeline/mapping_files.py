"""Operator-written mapping files (policy book, gateway API keys): YAML, or JSON by the ``.json`` suffix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def parse_mapping_file(file: Path) -> Any:
    """The file's parsed content; the parser's own exception when it does not parse (callers decide
    whether its message, which may quote the file, can be shown)."""
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def file_format(file: Path) -> str:
    return "JSON" if file.suffix == ".json" else "YAML"
