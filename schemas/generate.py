"""Generate the JSON Schemas in ``schemas/v1`` from the structs: ``python -m schemas.generate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from schemas.messages import SCHEMA_VERSION, DlqRecord, TokenDelta, Verdict
from schemas.policy import PolicyBookSpec

SCHEMA_DIR = Path(__file__).parent / SCHEMA_VERSION
FILES: dict[str, type[msgspec.Struct]] = {
    "token-delta.schema.json": TokenDelta,
    "verdict.schema.json": Verdict,
    "dlq-record.schema.json": DlqRecord,
    "policy-book.schema.json": PolicyBookSpec,
}


def schema_for(struct: type[msgspec.Struct], filename: str) -> dict[str, Any]:
    schema = msgspec.json.schema(struct)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://guardstream.dev/schemas/{SCHEMA_VERSION}/{filename}"
    if struct is TokenDelta:
        # __post_init__ rules, stated for non-Python consumers of the schema.
        body = schema["$defs"]["TokenDelta"]
        body["allOf"] = [
            {
                "if": {"properties": {"type": {"const": "delta"}}},
                "then": {
                    "required": ["message_index", "role", "seq"],
                    "properties": {"message_index": {"type": "integer"}, "role": {"type": "string"},
                                   "seq": {"type": "integer"}},
                },
            },
            {
                "if": {"properties": {"reasoning": {"const": True}}, "required": ["reasoning"]},
                "then": {"properties": {"role": {"const": "assistant"}}},
            },
        ]
    return schema


def render(struct: type[msgspec.Struct], filename: str) -> str:
    return json.dumps(schema_for(struct, filename), indent=2, sort_keys=True) + "\n"


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for filename, struct in FILES.items():
        (SCHEMA_DIR / filename).write_text(render(struct, filename), encoding="utf-8")
        print(f"wrote {SCHEMA_DIR / filename}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
