"""The durable per-conversation state of stream scoring (stored in Redis as msgpack).

Compact by construction: the token stream is packed uint32 (``array('I')`` bytes), everything else
is O(messages still being scored) plus the text the incremental tokenizer holds back. Per-token
data of a message (its scored positions and character spans) lives only until the model's outputs
for those tokens are taken by the judge.

One writer per field: each field says which stage module writes it (``ordering``:
:mod:`pipeline.scoring.ordering`, ``render``: :mod:`pipeline.scoring.render`, ``judge``:
:mod:`pipeline.scoring.judge`). Other stages only read it. Fields set once at creation say so.
"""

from __future__ import annotations

from array import array

import msgspec

from pipeline.decision import ResponseDebouncer
from pipeline.tokens.incremental import IncrementalState
from schemas.messages import Risk, TokenDelta


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
    """A user or assistant message whose verdicts are not all out yet.

    The render stage creates it and writes what the stream says about the message (its text, its
    scored positions); the judge writes what the model's outputs said.
    """

    index: int                        # creation
    role: str                         # creation
    closed: bool = False              # render: its <|im_end|> is in the stream
    final_seq: int = -1               # render: seq of its final chunk
    delta_starts: bytes = b""         # render, packed: message character offset where each seq's text starts
    text_len: int = 0                 # render: characters received so far
    last_ts_ms: int | None = None     # render: ts_ms of its newest delta
    positions: bytes = b""            # render, packed: stream positions of scored tokens not yet judged
    spans: bytes = b""                # render, packed: (start, end) character span of each of those tokens
    truncated: bool = False           # render: cut at the model context
    done: int = 0                     # judge: scored tokens judged so far
    debouncer: ResponseDebouncer = msgspec.field(default_factory=ResponseDebouncer)   # judge
    event_spans: dict[int, tuple[int, int]] = msgspec.field(default_factory=dict)  # judge: token index -> span
    last_span: tuple[int, int] | None = None   # judge
    blocked: bool = False             # judge: a flag whose action is block fired: progress stops
    labels: bytes = b""               # judge: per scored token risk index (only with include_token_labels)
    prompt: Risk | None = None        # judge, user message: the decision at its <|im_end|>
    prompt_category: str | None = None          # judge
    prompt_scores: dict[str, float] = msgspec.field(default_factory=dict)   # judge


class OpenMessage(msgspec.Struct):
    """The message receiving deltas now (written by the render stage only)."""

    index: int
    role: str
    think: bool = False
    in_reasoning: bool = True         # assistant: reasoning deltas may still come
    reasoning: TextStream = msgspec.field(default_factory=TextStream)
    content: TextStream = msgspec.field(default_factory=TextStream)
    skipped: bool = False             # no room in the model context: not judged at all
    truncated: bool = False


class ConversationState(msgspec.Struct, omit_defaults=True):   # small tombstones and fresh states
    conversation_id: str              # creation
    tenant: str | None                # creation
    key: str                          # creation
    # ordering: which deltas are accepted, in what order
    accepted_user: bool = False       # ordering: a user message was accepted (assistants after it think)
    message: int = -1                 # ordering: index of the last message begun
    message_open: bool = False        # ordering
    message_role: str = ""            # ordering
    next_seq: int = 0                 # ordering
    saw_content: bool = False         # ordering: the open message had a content delta (reasoning is over)
    held: list[HeldDelta] = msgspec.field(default_factory=list)   # ordering: early deltas waiting for a gap
    last_source: SourceRef | None = None  # ordering: the input record of the last delta applied (operators, replay)
    ended: bool = False               # ordering: ``type: end`` seen: the id is closed, later deltas are reported
    # render: the token stream and what of it is scored
    token_ids: bytes = b""            # render, packed uint32: the rendered conversation so far
    absorbed: int = 0                 # render: stream positions whose model outputs were taken for the judge
    queued: list[HeldDelta] = msgspec.field(default_factory=list)   # render: accepted, waiting for a re-render
    open: OpenMessage | None = None   # render
    group: list[GroupMessage] = msgspec.field(default_factory=list)   # render
    scoring: list[MessageScoring] = msgspec.field(default_factory=list)   # render appends and removes
    full: bool = False                # render: the model context is used up: later messages are not judged

    @property
    def stream_length(self) -> int:
        """Tokens in the rendered stream (``token_ids`` holds 4 bytes per token)."""
        return len(self.token_ids) // 4

    @property
    def message_think(self) -> bool:
        """The message being accepted is rendered with a think block (an assistant after a user message)."""
        return self.message_role == "assistant" and self.accepted_user


def tombstone(state: ConversationState) -> ConversationState:
    """What an ended conversation leaves in the store: enough to report later deltas of its id."""
    return ConversationState(state.conversation_id, state.tenant, state.key, ended=True)
