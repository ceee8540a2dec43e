"""Dead-letter records: how every worker reports input it could not judge."""

from __future__ import annotations

import base64

from schemas.messages import DlqRecord


def dlq_record(
    reason: str,
    raw: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    worker: str,
    now_ms: int,
    key: bytes | None = None,
    conversation_id: str | None = None,
) -> DlqRecord:
    """The DLQ's view of a bad input: original bytes (base64, and as text where they decode)."""
    raw = bytes(raw or b"")
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return DlqRecord(
        reason=reason,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        original_b64=base64.b64encode(raw).decode("ascii"),
        ts_ms=now_ms,
        worker=worker,
        original_key=bytes(key).decode("utf-8", "backslashreplace") if key is not None else None,
        original_text=text,
        conversation_id=conversation_id,
    )


def reason_class(reason: str) -> str:
    """A bounded metrics label: the reason up to its first ':' ("schema violation: ..." -> "schema violation")."""
    head = reason.split(":", 1)[0].strip().lower()
    return head[:48] or "unknown"
