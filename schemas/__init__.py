"""Versioned message contracts of guardstream (the bottom layer: depends on nothing here)."""

from schemas.messages import (
    SCHEMA_VERSION,
    DlqRecord,
    MessageError,
    TokenDelta,
    Verdict,
    decode_delta,
    decode_verdict,
    encode,
)

__all__ = [
    "SCHEMA_VERSION",
    "DlqRecord",
    "MessageError",
    "TokenDelta",
    "Verdict",
    "decode_delta",
    "decode_verdict",
    "encode",
]
