"""The render stage: a conversation's token stream grown from in-order deltas, as :mod:`pipeline.tokens.chat`
defines it, and what of it the engine must score.

Input: deltas in order (from :mod:`pipeline.scoring.ordering`). Output: Rejections for what cannot
be judged (context limit), a :class:`FeedRequest` for the engine, and, once the engine answered,
:class:`Taken`: which output rows are scored tokens of which message (for the judge). It writes the
render fields of :class:`ConversationState` (the stream, ``absorbed``, the per-message scoring
records' positions and spans, the queue); the judge only reads them.

The stream equals ``render_context(messages, i)`` for the message ``i`` being received, built
incrementally: template pieces are appended as the message's structure becomes known, text tokens
as the incremental tokenizer declares them stable. Scored tokens are recorded with their character
spans in the message text (reasoning and content deltas concatenated in seq order).

History re-render: when a message begins, earlier assistant messages whose think block the template
now drops are re-rendered (``<|im_start|>assistant\\n{content}<|im_end|>\\n``), which changes tokens
in the middle of the stream. It is done only once every token's outputs were taken: until then the
message's deltas wait in ``state.queued``, and :meth:`StreamRenderer.resume` (after the judge) renders
them, so no message is ever scored in a context it does not belong to. Each such message boundary
costs one more engine round.

Context limit: the stream never exceeds ``max_context_tokens``. Each message keeps room for the
tokens that close it, so a message cut short still gets its final verdict on what fit (a user
message's ``<|im_end|>`` comes right after its truncated text); the cut is reported once per
message. A message that begins when not even its template fits is not judged (reported); nor is any
later message of the conversation.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from dataclasses import dataclass

from pipeline.engine.types import FeedRequest
from pipeline.scoring.state import (
    ConversationState,
    GroupMessage,
    HeldDelta,
    MessageScoring,
    OpenMessage,
    Rejection,
    TextStream,
    pack,
    unpack,
)
from pipeline.tokens.chat import EMPTY_THINK_PIECE, END_PIECE, THINK_CLOSE_PIECE, THINK_OPEN_PIECE, header_piece
from pipeline.tokens.incremental import IncrementalTokenizer
from pipeline.tokens.text import TextTokenizer, TokenSpans
from schemas.messages import TokenDelta


@dataclass(frozen=True, slots=True)
class ScoredRows:
    """Rows of one engine answer that are scored tokens of one message, with their character spans."""

    record: MessageScoring
    rows: list[int]         # row indices into the engine's HeadOutputs, ascending
    spans: array[int]       # packed (start, end) per row: the token's characters in the message text


@dataclass(frozen=True, slots=True)
class Taken:
    """What one engine answer covers: scored rows per message, and the messages now fully scored."""

    scored: list[ScoredRows]
    finished: list[MessageScoring]   # closed and every scored token taken: their final verdict is due


class StreamRenderer:
    def __init__(self, text: TextTokenizer, max_context_tokens: int) -> None:
        self.text = text
        self.incremental = IncrementalTokenizer(text)
        self.max_context_tokens = max_context_tokens
        self.headers = {role: text.encode_template(header_piece(role)) for role in ("system", "user", "assistant")}
        self.end = text.encode_template(END_PIECE)
        self.empty_think = text.encode_template(EMPTY_THINK_PIECE)
        self.think_open = text.encode_template(THINK_OPEN_PIECE)
        self.think_close = text.encode_template(THINK_CLOSE_PIECE)

    # -- structure ------------------------------------------------------------------------------
    def _changes(self, state: ConversationState, role: str) -> list[bool]:
        """Which group messages lose their think block when a ``role`` message begins."""
        return [g.think and not (role != "user" and g.has_reasoning) for g in state.group]

    def _must_wait(self, state: ConversationState, role: str) -> bool:
        """A ``role`` message cannot begin yet: history must be re-rendered and outputs are pending."""
        return any(self._changes(state, role)) and state.absorbed < state.stream_length

    # -- stage interface ------------------------------------------------------------------------
    def render(self, state: ConversationState, item: HeldDelta) -> list[Rejection]:
        """Render one in-order delta, or queue it behind a pending history re-render."""
        if state.queued or (item.delta.seq == 0 and self._must_wait(state, str(item.delta.role))):
            state.queued.append(item)
            return []
        return self._render(state, item)

    def resume(self, state: ConversationState) -> list[Rejection]:
        """Render the queued deltas that may go now (after the judge took the outputs they waited for)."""
        out: list[Rejection] = []
        while state.queued:
            head = state.queued[0]
            if head.delta.seq == 0 and self._must_wait(state, str(head.delta.role)):
                break
            state.queued.pop(0)
            out += self._render(state, head)
        return out

    def request(self, state: ConversationState) -> FeedRequest | None:
        """The whole stream and the first position whose outputs are wanted, or None when up to date."""
        if state.absorbed >= state.stream_length:
            return None
        return FeedRequest(state.key, unpack(state.token_ids).tolist(), state.absorbed)

    def take(self, state: ConversationState, count: int) -> Taken:
        """The engine answered positions ``[absorbed, absorbed + count)``: map its rows to messages."""
        start = state.absorbed
        scored: list[ScoredRows] = []
        for record in state.scoring:
            if not record.positions:
                continue
            positions = unpack(record.positions)
            take = bisect_left(positions, start + count) - bisect_left(positions, start)
            if not take:
                continue
            rows = [position - start for position in positions[:take]]
            spans = unpack(record.spans)
            if take == len(positions):   # the usual case: every scored token so far is answered
                scored.append(ScoredRows(record, rows, spans))
                record.positions, record.spans = b"", b""
            else:
                scored.append(ScoredRows(record, rows, spans[: 2 * take]))
                record.positions, record.spans = pack(positions[take:]), pack(spans[2 * take:])
        state.absorbed = start + count
        finished = [r for r in state.scoring if r.closed and not r.positions]
        if finished:
            state.scoring = [r for r in state.scoring if not (r.closed and not r.positions)]
        return Taken(scored, finished)

    # -- structure ------------------------------------------------------------------------------
    def _render(self, state: ConversationState, item: HeldDelta) -> list[Rejection]:
        delta = item.delta
        notes: list[str] = []
        if delta.seq == 0:
            notes += self.begin(state, delta)
        record = _open_record(state)
        offset = record.text_len if record is not None else 0
        if record is not None:
            record.delta_starts += pack([record.text_len])
            record.text_len += len(delta.text)
            record.last_ts_ms = delta.ts_ms if delta.ts_ms is not None else record.last_ts_ms
        notes += self.add_text(state, delta, offset)
        if delta.final:
            notes += self.close(state, int(delta.seq or 0))
        return [Rejection(note, item.raw, item.source, state.conversation_id) for note in notes]

    def begin(self, state: ConversationState, delta: TokenDelta) -> list[str]:
        role = str(delta.role)
        self._rerender(state, role)
        if role == "user":
            state.group = []
        # Ordering accepted this message (and every user message before it): an assistant thinks
        # after a user message. Later user messages may be accepted already, but then nothing
        # waits in the queue behind a think block, so the flag is what it was at acceptance.
        think = role == "assistant" and state.accepted_user
        tokens = unpack(state.token_ids)
        needed = len(self.headers[role]) + (len(self.empty_think) if think else 0) + len(self.end)
        index = int(delta.message_index or 0)
        if state.full or len(tokens) + needed > self.max_context_tokens:
            state.full = True
            state.open = OpenMessage(index, role, skipped=True)
            return [f"conversation exceeds the model context of {self.max_context_tokens} tokens: message {index} "
                    "is not judged (nor any later message); start a new conversation"]
        start = len(tokens)
        tokens.extend(self.headers[role])
        state.token_ids = pack(tokens)
        state.open = OpenMessage(index, role, think=think)
        if role != "system":
            state.scoring.append(MessageScoring(index, role))
        if role != "user":
            state.group.append(GroupMessage(index, role, start, think=think))
        return []

    def _rerender(self, state: ConversationState, role: str) -> None:
        changes = self._changes(state, role)
        if not any(changes):
            return
        tokens = unpack(state.token_ids)
        first = changes.index(True)
        out = tokens[: state.group[first].start]
        for g, changed in zip(state.group[first:], changes[first:], strict=True):
            shift = len(out) - g.start
            if changed:
                content = tokens[g.content_start:g.content_end]
                if g.dropped_newlines:
                    content = array("I", self.text.encode_text("\n" * g.dropped_newlines + self.text.decode(content)))
                out.extend(self.headers["assistant"])
                g.content_start = len(out)
                out.extend(content)
                g.content_end = len(out)
                out.extend(self.end)
                g.think, g.dropped_newlines, g.start, g.end = False, 0, g.start + shift, len(out)
            else:
                out.extend(tokens[g.start:g.end])
                g.start, g.end = g.start + shift, g.end + shift
                if g.content_start >= 0:   # system messages have no content span
                    g.content_start, g.content_end = g.content_start + shift, g.content_end + shift
        state.token_ids = pack(out)
        state.absorbed = len(out)   # re-rendered history is context: no outputs wanted

    # -- text -----------------------------------------------------------------------------------
    def add_text(self, state: ConversationState, delta: TokenDelta, offset: int) -> list[str]:
        """Feed ``delta.text`` (starting at message character ``offset``) into the open message."""
        message = state.open
        if message is None or message.skipped or message.truncated:
            return []
        if delta.reasoning:
            return self._add_reasoning(state, message, delta.text, offset)
        notes = self._end_reasoning(state, message) if message.role == "assistant" else []
        spans = self._feed(message.content, delta.text, offset, strip=message.think, hold=False)
        return notes + self._append_text(state, message, spans, reserve=len(self.end))

    def _add_reasoning(self, state: ConversationState, message: OpenMessage, text: str, offset: int) -> list[str]:
        if not message.in_reasoning or not message.think:
            return []   # the scorer rejects such deltas before they get here
        if text:
            self._group_of(state, message).has_reasoning = True
        started = message.reasoning.base != -1
        spans = self._feed(message.reasoning, text, offset, strip=True, hold=True)
        if not started and message.reasoning.base != -1:
            needed = len(self.think_open) + 1 + len(self.think_close) + len(self.end)
            if not self._fits(state, needed):
                message.reasoning = TextStream()   # closes as an empty think block, which fits
                return self._truncate(state, message)
            self._extend(state, self.think_open)
        return self._append_text(state, message, spans, reserve=len(self.think_close) + len(self.end))

    def _end_reasoning(self, state: ConversationState, message: OpenMessage) -> list[str]:
        if not message.in_reasoning:
            return []
        message.in_reasoning = False
        notes: list[str] = []
        if message.think and message.reasoning.base != -1:
            spans = self._finish(message.reasoning)
            notes = self._append_text(state, message, spans, reserve=len(self.think_close) + len(self.end))
            self._extend(state, self.think_close)
        elif message.think:
            self._extend(state, self.empty_think)
        self._group_of(state, message).content_start = state.stream_length
        return notes

    def close(self, state: ConversationState, final_seq: int) -> list[str]:
        message = state.open
        state.open = None
        if message is None or message.skipped:
            return []
        notes: list[str] = []
        if message.role == "assistant":
            notes += self._end_reasoning(state, message)
        if not message.truncated:
            spans = self._finish(message.content)
            notes += self._append_text(state, message, spans, reserve=len(self.end))
        position = state.stream_length
        if message.role == "assistant":
            group = self._group_of(state, message)
            group.content_end, group.dropped_newlines = position, message.content.dropped_newlines
        record = self._scoring_of(state, message)
        if record is not None:
            if message.role == "user":
                record.positions += pack([position])
                record.spans += pack([record.text_len, record.text_len])
            record.closed, record.final_seq = True, final_seq
        self._extend(state, self.end)
        if message.role != "user":
            self._group_of(state, message).end = state.stream_length
        return notes

    # -- helpers --------------------------------------------------------------------------------
    def _finish(self, stream: TextStream) -> TokenSpans:
        """The held tail at the end of a text, its spans in message characters like :meth:`_feed`'s
        (content after reasoning starts at the reasoning's length, not at 0)."""
        emitted = self.incremental.finish(stream.tokenizer)
        base = max(stream.base, 0)
        return TokenSpans(emitted.ids, [(base + a, base + b) for a, b in emitted.spans])

    def _feed(self, stream: TextStream, text: str, offset: int, *, strip: bool, hold: bool) -> TokenSpans:
        if stream.base == -1:
            if strip:
                kept = text.lstrip("\n")
                stream.dropped_newlines += len(text) - len(kept)
                offset += len(text) - len(kept)
                text = kept
            if not text:
                return TokenSpans([], [])
            stream.base = offset
        if hold:
            body = text.rstrip("\n")
            if not body:
                stream.held_newlines += len(text)
                return TokenSpans([], [])
            trailing = len(text) - len(body)
            text = "\n" * stream.held_newlines + body
            stream.held_newlines = trailing
        emitted = self.incremental.feed(stream.tokenizer, text)
        return TokenSpans(emitted.ids, [(stream.base + a, stream.base + b) for a, b in emitted.spans])

    def _append_text(
        self, state: ConversationState, message: OpenMessage, spans: TokenSpans, reserve: int,
    ) -> list[str]:
        if not spans.ids or message.truncated:
            return []
        start = state.stream_length
        room = self.max_context_tokens - reserve - start
        ids, kept = spans.ids[: max(room, 0)], spans.spans[: max(room, 0)]
        state.token_ids += pack(ids)
        record = self._scoring_of(state, message)
        if record is not None and message.role == "assistant":
            record.positions += pack(list(range(start, start + len(ids))))
            record.spans += pack([x for span in kept for x in span])
        if len(ids) < len(spans.ids):
            return self._truncate(state, message)
        return []

    def _truncate(self, state: ConversationState, message: OpenMessage) -> list[str]:
        message.truncated = True
        record = self._scoring_of(state, message)
        if record is not None:
            record.truncated = True
        return [f"message {message.index} reaches the model context of {self.max_context_tokens} tokens: "
                "only its beginning is judged"]

    def _fits(self, state: ConversationState, needed: int) -> bool:
        return state.stream_length + needed <= self.max_context_tokens

    def _extend(self, state: ConversationState, ids: list[int]) -> None:
        state.token_ids += pack(ids)

    @staticmethod
    def _group_of(state: ConversationState, message: OpenMessage) -> GroupMessage:
        for g in reversed(state.group):
            if g.index == message.index:
                return g
        return GroupMessage(message.index, message.role, -1)   # not tracked (cannot happen for assistants)

    @staticmethod
    def _scoring_of(state: ConversationState, message: OpenMessage) -> MessageScoring | None:
        for record in reversed(state.scoring):
            if record.index == message.index:
                return record
        return None


def _open_record(state: ConversationState) -> MessageScoring | None:
    if state.open is None or state.open.skipped:
        return None
    for record in reversed(state.scoring):
        if record.index == state.open.index:
            return record
    return None
