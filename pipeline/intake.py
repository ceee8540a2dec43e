"""The edge: one decode-and-validate function for every worker that reads ``guard.in``.

Both the stream and the generative worker call :func:`accept` on each input record, so one input
gets one verdict on its validity whichever worker reads it. What it refuses, and why, is listed in
docs/guarantees.md ("Input limits").
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import Settings
from schemas.messages import MAX_MESSAGE_INDEX, MessageError, TokenDelta, decode_delta


@dataclass(frozen=True)
class InputLimits:
    """What one record may hold; per-conversation limits on held deltas live with the scorer."""

    max_text_bytes: int = 65536
    max_conversation_messages: int = 10_000

    @classmethod
    def of(cls, settings: Settings) -> InputLimits:
        return cls(max_text_bytes=settings.max_text_bytes,
                   max_conversation_messages=min(settings.max_conversation_messages, MAX_MESSAGE_INDEX + 1))


def accept(key: bytes | None, value: bytes | None, limits: InputLimits) -> TokenDelta:
    """The delta in ``value``, or MessageError with the DLQ reason.

    The record key must be the conversation id's UTF-8 bytes: Kafka partitions by key, and a
    conversation spread over partitions would be judged by several workers at once, out of order.
    """
    delta = decode_delta(value, limits.max_text_bytes)
    expected = delta.conversation_id.encode("utf-8")
    if key is None:
        raise MessageError("key mismatch: the record has no key; key every delta by its conversation_id")
    if bytes(key) != expected:
        shown = bytes(key[:64]).decode("utf-8", "backslashreplace")
        raise MessageError(f"key mismatch: record key {shown!r} ({len(key)} bytes) is not the conversation_id; "
                           "key every delta by its conversation_id")
    if delta.message_index is not None and delta.message_index >= limits.max_conversation_messages:
        raise MessageError(f"message limit: message_index {delta.message_index} >= "
                           f"{limits.max_conversation_messages} messages per conversation")
    return delta
