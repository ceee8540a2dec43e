"""Growing a conversation's token stream from in-order deltas, as :mod:`pipeline.tokens.chat` defines it.

The stream equals ``render_context(messages, i)`` for the message ``i`` being received, built
incrementally: template pieces are appended as the message's structure becomes known, text tokens
as the incremental tokenizer declares them stable. Scored tokens are recorded with their character
spans in the message text (reasoning and content deltas concatenated in seq order).

History re-render: when a message begins, earlier assistant messages whose think block the template
now drops are re-rendered (``<|im_start|>assistant\\n{content}<|im_end|>\\n``), which changes tokens
in the middle of the stream. It is done only once every token's outputs were absorbed (the caller
queues the message otherwise), so no message is ever scored in a context it does not belong to.

Context limit: the stream never exceeds ``max_context_tokens``. Each message keeps room for the
tokens that close it, so a message cut short still gets its final verdict on what fit (a user
message's ``<|im_end|>`` comes right after its truncated text); the cut is reported once per
message. A message that begins when not even its template fits is not judged (reported); nor is any
later message of the conversation.
"""

from __future__ import annotations

from array import array

from pipeline.scoring.state import (
    ConversationState,
    GroupMessage,
    MessageScoring,
    OpenMessage,
    TextStream,
    pack,
    unpack,
)
from pipeline.tokens.chat import EMPTY_THINK_PIECE, END_PIECE, THINK_CLOSE_PIECE, THINK_OPEN_PIECE, header_piece
from pipeline.tokens.incremental import IncrementalTokenizer
from pipeline.tokens.text import TextTokenizer, TokenSpans
from schemas.messages import TokenDelta


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

    def must_wait(self, state: ConversationState, role: str) -> bool:
        """A ``role`` message cannot begin yet: history must be re-rendered and outputs are pending."""
        return any(self._changes(state, role)) and state.absorbed < len(state.token_ids) // 4

    def begin(self, state: ConversationState, delta: TokenDelta) -> list[str]:
        role = str(delta.role)
        self._rerender(state, role)
        if role == "user":
            state.group = []
        think = role == "assistant" and state.seen_user
        if role == "user":
            state.seen_user = True
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
        self._group_of(state, message).content_start = len(state.token_ids) // 4
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
        position = len(state.token_ids) // 4
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
            self._group_of(state, message).end = len(state.token_ids) // 4
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
        tokens = unpack(state.token_ids)
        room = self.max_context_tokens - reserve - len(tokens)
        ids, kept = spans.ids[: max(room, 0)], spans.spans[: max(room, 0)]
        start = len(tokens)
        tokens.extend(ids)
        state.token_ids = pack(tokens)
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
        return len(state.token_ids) // 4 + needed <= self.max_context_tokens

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
