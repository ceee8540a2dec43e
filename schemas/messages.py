"""The messages on guardstream's topics: the one source of truth.

The JSON Schemas under ``schemas/v1/`` are generated from these structs
(``python -m schemas.generate``) and a test keeps them equal.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

SCHEMA_VERSION = "v1"

Role = Literal["system", "user", "assistant"]
Risk = Literal["safe", "controversial", "unsafe"]
Action = Literal["allow", "block"]
Source = Literal["stream", "generative"]
VerdictKind = Literal["progress", "flag", "final"]

ConversationId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class TokenDelta(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A chunk of one chat message, published by an LLM frontend to ``guard.in``."""

    conversation_id: ConversationId
    type: Literal["delta", "end"] = "delta"
    message_index: NonNegative | None = None
    role: Role | None = None
    seq: NonNegative | None = None
    text: str = ""
    final: bool = False
    reasoning: bool = False
    tenant: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    ts_ms: NonNegative | None = None

    def __post_init__(self) -> None:
        if self.type == "delta":
            missing = [n for n in ("message_index", "role", "seq") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"a delta needs {', '.join(missing)}")
            if self.reasoning and self.role != "assistant":
                raise ValueError("only assistant messages carry reasoning text")


class Verdict(msgspec.Struct, omit_defaults=True):
    """A ruling on one message, published to ``guard.verdicts``."""

    verdict_id: str
    conversation_id: ConversationId
    message_index: NonNegative
    role: Role
    source: Source
    kind: VerdictKind
    risk: Risk
    action: Action
    model: str
    ts_ms: NonNegative
    category: str | None = None
    categories: list[str] | None = None
    refusal: bool | None = None
    token_index: NonNegative | None = None
    seq: NonNegative | None = None
    char_offset: NonNegative | None = None
    cleared_through_seq: int | None = None
    scores: dict[str, float] | None = None
    latency_ms: int | None = None
    tenant: str | None = None
    token_labels: list[Risk] | None = None
    # Generative rulings only: tokens of the message text elided to fit the model's context
    # (long-message policy, docs/generative.md); absent when the whole text was judged.
    truncated_tokens: NonNegative | None = None


class DlqRecord(msgspec.Struct, omit_defaults=True):
    """What ``guard.in.dlq`` receives for input that could not be judged.

    The original bytes travel base64-encoded (they may not be UTF-8) and, where they decode,
    as text too for humans reading the topic.
    """

    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    original_b64: str
    ts_ms: NonNegative
    worker: str
    original_key: str | None = None
    original_text: str | None = None
    conversation_id: str | None = None


class MessageError(ValueError):
    """Input that cannot be judged; ``str(err)`` is the reason written to the DLQ."""


_delta_decoder = msgspec.json.Decoder(TokenDelta)
_verdict_decoder = msgspec.json.Decoder(Verdict)
_encoder = msgspec.json.Encoder()


def decode_delta(raw: bytes | None, max_text_bytes: int = 65536) -> TokenDelta:
    """Decode and validate one ``guard.in`` value; raise MessageError with a DLQ reason."""
    if not raw:
        raise MessageError("empty message: a TokenDelta JSON object is required")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"invalid UTF-8 at byte {exc.start}: messages must be UTF-8 JSON") from None
    try:
        delta = _delta_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise MessageError(f"schema violation: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MessageError(f"malformed JSON: {exc}") from None
    size = len(delta.text.encode("utf-8", "surrogatepass"))
    if size > max_text_bytes:
        raise MessageError(
            f"oversized text: {size} bytes > limit {max_text_bytes} (split the message into smaller deltas)"
        )
    return delta


def encode(message: TokenDelta | Verdict | DlqRecord) -> bytes:
    return _encoder.encode(message)


def decode_verdict(raw: bytes) -> Verdict:
    return _verdict_decoder.decode(raw)
