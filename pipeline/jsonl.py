"""Reading JSONL input files (conversations, evaluation sets): one JSON value a line, UTF-8.

Lines are split on ``\\n`` only, not with ``splitlines()``: JSON strings may hold raw U+2028 and
friends, which are not line ends here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import UserError


def read_jsonl_text(path: str | Path, what: str, *, missing_hint: str = "") -> str:
    """The file's text; a clear error naming ``what`` it should hold when it is absent or not UTF-8."""
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} file {file} does not exist{missing_hint}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{file} is not UTF-8 (byte {exc.start}); {what} files are UTF-8 JSONL") from None


def json_lines(lines: Iterable[str], source: str) -> Iterator[tuple[str, int, Any]]:
    """``(where, line number, value)`` of every non-blank line (``where`` is ``source:number``)."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            yield where, number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
