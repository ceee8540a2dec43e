"""Reading the JSON files of a model directory (config.json, tokenizer_config.json, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import UserError


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a broken or non-object file is a UserError naming it, not a traceback."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data
