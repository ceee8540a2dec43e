"""The messages on guardstream's topics: the one source of truth.

The JSON Schemas under ``schemas/v1/`` are generated from these structs
(``python -m schemas.generate``) and a test keeps them equal.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

import msgspec

SCHEMA_VERSION = "v1"

Role = Literal["system", "user", "assistant"]
Risk = Literal["safe", "controversial", "unsafe"]
Action = Literal["allow", "block"]
Source = Literal["stream", "generative"]
VerdictKind = Literal["progress", "flag", "final"]

# Bounds of every field a producer controls (docs/guarantees.md, "Input limits"). Integers stay far
# inside int64 so that no value can overflow a state encoder (msgpack, packed arrays) downstream.
MAX_MESSAGE_INDEX = 100_000          # messages of one conversation (a tighter setting may apply)
MAX_SEQ = 2**31 - 1                  # chunks of one message
MAX_TS_MS = 253_402_300_799_999      # 9999-12-31T23:59:59.999Z
MAX_INT64 = 2**63 - 1
MAX_TENANT_CHARS = 128

ConversationId = Annotated[str, msgspec.Meta(
    min_length=1, max_length=256, description="Also the Kafka record key of every delta, byte for byte.")]
Tenant = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TENANT_CHARS)]
NonNegative = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]
Int64 = Annotated[int, msgspec.Meta(ge=-MAX_INT64 - 1, le=MAX_INT64)]
MessageIndex = Annotated[int, msgspec.Meta(ge=0, le=MAX_MESSAGE_INDEX)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
TimestampMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_TS_MS, description="Unix time, milliseconds.")]


class TokenDelta(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A chunk of one chat message, published by an LLM frontend to ``guard.in``."""

    conversation_id: ConversationId
    type: Literal["delta", "end"] = "delta"
    message_index: MessageIndex | None = None
    role: Role | None = None
    seq: Seq | None = None
    text: Annotated[str, msgspec.Meta(description=(
        "At most max_text_bytes UTF-8 bytes (a worker setting, 65,536 by default); no NUL."))] = ""
    final: bool = False
    reasoning: bool = False
    tenant: Tenant | None = None
    ts_ms: TimestampMs | None = None

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
    message_index: MessageIndex
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
    seq: Seq | None = None
    char_offset: NonNegative | None = None
    cleared_through_seq: Annotated[int, msgspec.Meta(ge=-1, le=MAX_SEQ)] | None = None
    scores: dict[str, float] | None = None
    latency_ms: Int64 | None = None
    tenant: Tenant | None = None
    token_labels: list[Risk] | None = None
    # Generative rulings only: tokens of the message text elided to fit the model's context
    # (long-message policy, docs/generative.md); absent when the whole text was judged.
    truncated_tokens: NonNegative | None = None


class DlqRecord(msgspec.Struct, omit_defaults=True):
    """What ``guard.in.dlq`` receives for input that could not be judged.

    The original bytes travel base64-encoded (they may not be UTF-8) and, where they decode,
    as text too for humans reading the topic. A record always fits the DLQ topic's message limit:
    past it the original is cut (``original_truncated``), and ``original_length``,
    ``original_sha256`` and the source topic/partition/offset identify the full original, which
    can be fetched from the input topic while it is retained (docs/guarantees.md).
    """

    reason: str
    source_topic: str
    source_partition: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
    source_offset: NonNegative
    original_b64: str
    ts_ms: NonNegative
    worker: str
    original_key: str | None = None
    original_text: str | None = None
    conversation_id: str | None = None
    original_length: NonNegative | None = None
    original_sha256: str | None = None
    original_truncated: bool = False


class MessageError(ValueError):
    """Input that cannot be judged; ``str(err)`` is the reason written to the DLQ.

    Every reason starts with one of ``REASON_CLASSES`` (the bounded label metrics use) and is at
    most ``MAX_REASON_CHARS`` long: it may quote input, and input is attacker-sized.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(bounded(reason))


# The classes of input the edge refuses; every MessageError reason begins with one of them.
EDGE_REASON_CLASSES = (
    "empty message", "invalid utf-8", "byte order mark", "malformed json", "lone surrogate",
    "nested json", "wrong type", "number out of range", "schema violation", "duplicate key",
    "nul character", "control character", "oversized text", "key mismatch", "message limit",
)
MAX_REASON_CHARS = 300
_CUT_MARK = "…[cut]"


def bounded(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters with a visible mark (reasons and logs quote input)."""
    return text if len(text) <= limit else text[: limit - len(_CUT_MARK)] + _CUT_MARK


_delta_decoder = msgspec.json.Decoder(TokenDelta)
_verdict_decoder = msgspec.json.Decoder(Verdict)
_encoder = msgspec.json.Encoder()
_BOM = b"\xef\xbb\xbf"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KEY = re.compile(rb'"([a-z_]+)"\s*:')


def decode_delta(raw: bytes | None, max_text_bytes: int = 65536) -> TokenDelta:
    """Decode and validate one ``guard.in`` value; raise MessageError with a DLQ reason.

    Work is linear in ``len(raw)``: msgspec refuses anything but a flat object of known scalar
    fields at the first wrong byte, so deep nesting costs nothing.
    """
    if not raw:
        raise MessageError("empty message: a TokenDelta JSON object is required")
    if raw.startswith(_BOM):
        raise MessageError("byte order mark before the JSON: send UTF-8 without a BOM")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"invalid UTF-8 at byte {exc.start}: messages must be UTF-8 JSON") from None
    try:
        delta = _delta_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise MessageError(_validation_reason(str(exc))) from None
    except msgspec.DecodeError as exc:
        if _SURROGATE_ESCAPE.search(raw):
            raise MessageError(f"lone surrogate escape in a JSON string ({exc}): send valid Unicode") from None
        raise MessageError(f"malformed JSON: {exc}") from None
    _check_keys_unique(raw)
    for name, value in (("conversation_id", delta.conversation_id), ("tenant", delta.tenant)):
        if value is not None and _CONTROL.search(value):
            raise MessageError(f"control character in {name}: ids are printable text")
    if "\x00" in delta.text:
        raise MessageError(f"nul character in text at character {delta.text.index(chr(0))}")
    size = len(delta.text.encode("utf-8", "surrogatepass"))
    if size > max_text_bytes:
        raise MessageError(
            f"oversized text: {size} bytes > limit {max_text_bytes} (split the message into smaller deltas)"
        )
    return delta


def _validation_reason(error: str) -> str:
    """Name the class of a schema error: the generic message stays as the detail."""
    if "got `float`" in error or "got `bool`" in error:
        return f"wrong type: {error} (integers must be JSON integers)"
    if ("got `array`" in error or "got `object`" in error) and "at `$." in error:
        return f"nested json: {error} (TokenDelta fields are flat scalars)"
    if "Expected `int` <=" in error or "Expected `int` >=" in error:
        return f"number out of range: {error}"
    return f"schema violation: {error}"


def _check_keys_unique(raw: bytes) -> None:
    """Refuse duplicate keys: decoders disagree on which copy wins, so the message is ambiguous.

    Runs after msgspec accepted ``raw``, so it is one flat object of known scalar fields. Without a
    backslash no string can hold a quote or spell a key in escapes, so every quoted field name
    followed by a colon is a key, literally: a regex finds them all in a third of the time of a
    second parse, which was the largest part of a delta's decode. Anything else (and any
    duplicate, for its message) takes the full parse, which is linear and cannot recurse.
    """
    if b"\\" not in raw:
        keys = _KEY.findall(raw)
        if len(keys) == len(set(keys)):
            return
    json.loads(raw, object_pairs_hook=_unique_pairs)


def _unique_pairs(pairs: list[tuple[str, object]]) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise MessageError(f"duplicate key {key!r} in the JSON object: send each field once")
        seen.add(key)


def encode(message: TokenDelta | Verdict | DlqRecord) -> bytes:
    return _encoder.encode(message)


def decode_verdict(raw: bytes) -> Verdict:
    return _verdict_decoder.decode(raw)
