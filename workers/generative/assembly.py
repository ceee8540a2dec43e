"""Complete messages out of TokenDeltas: the per-conversation value of the worker's table.

A conversation's draft holds, per message index, its role, the chunks received so far (until the
message is complete) and then the assembled text. Applying a delta is idempotent (a repeated
chunk changes nothing), which is what makes replay after a crash safe: the table, restored from
its changelog, may already hold chunks that are delivered again.

Which messages are ready for a ruling, and with which context, depends only on the draft's
content, never on arrival timing, so a ruling recomputed after a restart is computed on the same
text:
- a user message: when complete (prompt moderation renders ``[user]``);
- an assistant message: when complete and every lower index is present and complete; the
  context is the nearest user message before it (response moderation renders
  ``[user, assistant]``; an empty user text if none). An assistant message whose history never
  completes gets no ruling; the worker reports it to the DLQ when the conversation ends.
- system messages are kept as context and never ruled.
Reasoning (thinking) chunks are kept out of the text: Gen judges the visible answer.
"""

from __future__ import annotations

import msgspec

from pipeline.gen.render import ModerationRequest, prompt_request, response_request
from schemas.messages import TokenDelta


class AssemblyError(ValueError):
    """A delta that contradicts what the conversation already holds; the reason goes to the DLQ."""


class MessageDraft(msgspec.Struct, omit_defaults=True):
    role: str
    chunks: dict[int, str | None] = msgspec.field(default_factory=dict)   # seq -> text (None: reasoning)
    final_seq: int | None = None
    text: str | None = None          # set once every chunk 0..final_seq has arrived
    ruled: bool = False              # a ruling for this message was delivered

    @property
    def complete(self) -> bool:
        return self.text is not None


class ConversationDraft(msgspec.Struct, omit_defaults=True):
    tenant: str | None = None
    messages: dict[int, MessageDraft] = msgspec.field(default_factory=dict)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ConversationDraft)


def encode_draft(draft: ConversationDraft) -> bytes:
    return _encoder.encode(draft)


def decode_draft(raw: bytes | None) -> ConversationDraft:
    return ConversationDraft() if raw is None else _decoder.decode(raw)


def apply_delta(draft: ConversationDraft, delta: TokenDelta) -> bool:
    """Add one chunk; True when the draft changed. Raises AssemblyError on contradictions."""
    assert delta.message_index is not None and delta.role is not None and delta.seq is not None
    if delta.tenant is not None and draft.tenant is None:
        draft.tenant = delta.tenant
    message = draft.messages.get(delta.message_index)
    if message is None:
        message = draft.messages[delta.message_index] = MessageDraft(role=delta.role)
    elif message.role != delta.role:
        raise AssemblyError(f"message {delta.message_index} is a {message.role} message; a chunk says {delta.role}")
    chunk = None if delta.reasoning else delta.text
    if message.complete:
        if message.final_seq is not None and delta.seq <= message.final_seq:
            return False   # a repeat of a chunk of a finished message: already applied
        raise AssemblyError(f"chunk seq {delta.seq} arrived after message {delta.message_index} "
                            f"was complete at seq {message.final_seq}")
    if delta.seq in message.chunks:
        if message.chunks[delta.seq] != chunk:
            raise AssemblyError(f"chunk seq {delta.seq} of message {delta.message_index} arrived twice "
                                "with different text")
        if not delta.final or message.final_seq == delta.seq:
            return False
    if delta.final:
        if message.final_seq is not None and message.final_seq != delta.seq:
            raise AssemblyError(f"message {delta.message_index} has final chunks at seq {message.final_seq} "
                                f"and {delta.seq}")
        if any(seq > delta.seq for seq in message.chunks):
            raise AssemblyError(f"final seq {delta.seq} of message {delta.message_index} is below a chunk "
                                "already received")
        message.final_seq = delta.seq
    elif message.final_seq is not None and delta.seq > message.final_seq:
        raise AssemblyError(f"chunk seq {delta.seq} is past the final seq {message.final_seq} "
                            f"of message {delta.message_index}")
    message.chunks[delta.seq] = chunk
    if message.final_seq is not None and len(message.chunks) == message.final_seq + 1:
        message.text = "".join(message.chunks[s] or "" for s in range(message.final_seq + 1))
        message.chunks = {}
    return True


def _user_context(draft: ConversationDraft, index: int) -> str:
    for earlier in range(index - 1, -1, -1):
        message = draft.messages[earlier]
        if message.role == "user":
            return message.text or ""
    return ""


def _history_complete(draft: ConversationDraft, index: int) -> bool:
    return all(i in draft.messages and draft.messages[i].complete for i in range(index))


def ready_for_ruling(draft: ConversationDraft) -> dict[int, ModerationRequest]:
    """Unruled complete user/assistant messages whose context is settled, with their requests."""
    ready: dict[int, ModerationRequest] = {}
    for index in sorted(draft.messages):
        message = draft.messages[index]
        if message.ruled or message.text is None:
            continue
        if message.role == "user":
            ready[index] = prompt_request(message.text)
        elif message.role == "assistant" and _history_complete(draft, index):
            ready[index] = response_request(_user_context(draft, index), message.text)
    return ready


def stranded_messages(draft: ConversationDraft) -> list[int]:
    """Complete assistant messages that can never be ruled because lower indices are missing."""
    return [i for i, m in sorted(draft.messages.items())
            if m.role == "assistant" and m.complete and not m.ruled and not _history_complete(draft, i)]
