"""The durable per-conversation state of stream scoring (stored in Redis as msgpack).

Compact by construction: the token stream is packed uint32 (``array('I')`` bytes), everything else
is O(messages still being scored) plus the text the incremental tokenizer holds back. Per-token
data of a message (its scored positions and character spans) lives only until the model's outputs
for those tokens are absorbed.
"""

from __future__ import annotations

from array import array

import msgspec

from pipeline.decision import ResponseDebouncer, Risk
from pipeline.tokens.incremental import IncrementalState
from schemas.messages import TokenDelta


def pack(values: list[int] | array[int]) -> bytes:
    return array("I", values).tobytes()


def unpack(data: bytes) -> array[int]:
    out = array("I")
    out.frombytes(data)
    return out


class SourceRef(msgspec.Struct, frozen=True):
    """Where an input record came from (for the DLQ and for fencing)."""

    topic: str
    partition: int
    offset: int


class Rejection(msgspec.Struct, frozen=True):
    """An input the scorer could not (fully) judge; the worker sends it to the DLQ with ``reason``."""

    reason: str
    raw: bytes
    source: SourceRef
    conversation_id: str


class HeldDelta(msgspec.Struct):
    """A delta waiting for an earlier one (a seq gap), with what the DLQ needs if it expires.

    ``received_ms`` is the input record's log time (its Kafka timestamp), not the worker's clock:
    a replay of the log rebuilds the same value, so a gap's deadline survives restarts.
    """

    delta: TokenDelta
    raw: bytes
    source: SourceRef
    received_ms: int


class TextStream(msgspec.Struct):
    """One text of the open message (its reasoning or its content) on its way into tokens."""

    tokenizer: IncrementalState = msgspec.field(default_factory=IncrementalState)
    base: int = -1             # message character offset of the first character fed; -1: none yet
    dropped_newlines: int = 0  # leading "\n" the template strips (content after a think block, reasoning)
    held_newlines: int = 0     # trailing "\n" of reasoning, dropped if the reasoning ends there


class GroupMessage(msgspec.Struct):
    """A message after the last user message: its rendering may still change (history re-render)."""

    index: int
    role: str
    start: int                  # stream position of its <|im_start|>
    end: int = -1               # stream position after its <|im_end|>\n; -1 while open
    think: bool = False         # rendered with a think block now
    has_reasoning: bool = False  # raw reasoning text was non-empty (the template's truthiness test)
    content_start: int = -1
    content_end: int = -1
    dropped_newlines: int = 0   # content newlines stripped after the think block


class MessageScoring(msgspec.Struct):
    """A user or assistant message whose verdicts are not all out yet."""

    index: int
    role: str
    closed: bool = False
    final_seq: int = -1
    delta_starts: bytes = b""         # packed: message character offset where each seq's text starts
    text_len: int = 0                 # characters received so far
    last_ts_ms: int | None = None
    positions: bytes = b""            # packed: stream positions of scored tokens not yet absorbed
    spans: bytes = b""                # packed: (start, end) character span of each of those tokens
    done: int = 0                     # scored tokens absorbed so far
    debouncer: ResponseDebouncer = msgspec.field(default_factory=ResponseDebouncer)
    event_spans: dict[int, tuple[int, int]] = msgspec.field(default_factory=dict)  # token index -> span
    last_span: tuple[int, int] | None = None
    blocked: bool = False             # a flag whose action is block fired: progress stops
    labels: bytes = b""               # per scored token risk index (only with include_token_labels)
    truncated: bool = False
    prompt: Risk | None = None        # user message: the decision at its <|im_end|>
    prompt_category: str | None = None
    prompt_scores: dict[str, float] = msgspec.field(default_factory=dict)


class OpenMessage(msgspec.Struct):
    """The message receiving deltas now."""

    index: int
    role: str
    think: bool = False
    in_reasoning: bool = True         # assistant: reasoning deltas may still come
    reasoning: TextStream = msgspec.field(default_factory=TextStream)
    content: TextStream = msgspec.field(default_factory=TextStream)
    skipped: bool = False             # no room in the model context: not judged at all
    truncated: bool = False


class ConversationState(msgspec.Struct, omit_defaults=True):   # small tombstones and fresh states
    conversation_id: str
    tenant: str | None
    key: str
    token_ids: bytes = b""            # packed uint32: the rendered conversation so far
    absorbed: int = 0                 # stream positions whose model outputs were absorbed
    seen_user: bool = False           # rendering: a user message has begun
    # ordering
    accepted_user: bool = False       # a user message was accepted (it may still be queued)
    message_think: bool = False       # the message being accepted is rendered with a think block
    message: int = -1                 # index of the last message begun
    message_open: bool = False
    message_role: str = ""
    next_seq: int = 0
    saw_content: bool = False
    held: list[HeldDelta] = msgspec.field(default_factory=list)
    last_source: SourceRef | None = None  # the input record of the last delta applied (for operators, replay)
    queued: list[HeldDelta] = msgspec.field(default_factory=list)   # in order, waiting for a re-render
    notes: list[Rejection] = msgspec.field(default_factory=list)    # found while rendering queued deltas
    # rendering and scoring
    open: OpenMessage | None = None
    group: list[GroupMessage] = msgspec.field(default_factory=list)
    scoring: list[MessageScoring] = msgspec.field(default_factory=list)
    full: bool = False                # the model context is used up: later messages are not judged
    ended: bool = False               # ``type: end`` seen: the id is closed, later deltas are reported
