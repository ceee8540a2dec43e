"""Complete messages out of TokenDeltas: the per-conversation drafts of the generative worker.

A conversation's draft holds, per message index, its role, the text assembled so far and the
chunks that arrived ahead of a missing seq. Work per delta is bounded by the delta: a chunk that
continues the message is appended (never re-joined with what came before), and text past the
draft limit is dropped from the middle (:class:`DraftLimits`): the first half of the limit (the
head) and the latest half (a rolling tail) are kept, the number of characters dropped between them
is counted, and the completed message reads ``head + [... N characters elided ...] + tail``, so
a message of any length still gets a ruling under the long-message policy (docs/generative.md).

Applying a delta is idempotent (a repeated chunk changes nothing), which is what makes replay
after a crash safe: the draft, rebuilt from the changelog, may already hold chunks that are
delivered again. The changelog is a log of the :class:`ChunkOp` / :class:`RuledOp` operations that
changed a draft (see :mod:`workers.generative.drafts`); replaying them through the same functions
rebuilds the same draft.

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

from collections import deque
from dataclasses import dataclass, field

import msgspec

from pipeline.gen.render import ModerationRequest, prompt_request, response_request
from schemas.messages import TokenDelta

# Changelog records carry integers as msgpack int64: anything larger could not be encoded.
MAX_INDEX = 2**63 - 1
DRAFT_ELISION = "\n[... {n} characters elided ...]\n"


class AssemblyError(ValueError):
    """A delta that contradicts what the conversation holds or passes a limit; the reason goes to the DLQ."""


@dataclass(frozen=True)
class DraftLimits:
    """Bounds of one conversation's draft (settings ``gen_max_message_chars`` etc.)."""

    max_message_chars: int = 131072     # head + tail kept per message; the middle past it is elided
    max_messages: int = 1024            # message indices held per conversation
    max_held_chars: int = 262144        # text of chunks held ahead of a missing seq, per message

    @property
    def head_chars(self) -> int:
        return self.max_message_chars - self.max_message_chars // 2

    @property
    def tail_chars(self) -> int:
        return self.max_message_chars // 2


# --- operations: what the changelog records --------------------------------------------------
class ChunkOp(msgspec.Struct, array_like=True, tag="c"):
    """One accepted chunk (``text`` None: reasoning)."""

    message_index: int
    role: str
    seq: int
    text: str | None
    final: bool = False
    tenant: str | None = None


class RuledOp(msgspec.Struct, array_like=True, tag="r"):
    """The ruling of ``message_index`` was delivered."""

    message_index: int


Op = ChunkOp | RuledOp
_op_encoder = msgspec.msgpack.Encoder()
_op_decoder = msgspec.msgpack.Decoder(Op)


def encode_op(op: Op) -> bytes:
    return _op_encoder.encode(op)


def decode_op(raw: bytes) -> Op:
    return _op_decoder.decode(raw)


def chunk_op(delta: TokenDelta) -> ChunkOp:
    """The operation for a delta; AssemblyError when it could not be recorded."""
    assert delta.message_index is not None and delta.role is not None and delta.seq is not None
    if delta.message_index > MAX_INDEX or delta.seq > MAX_INDEX:
        raise AssemblyError(f"message_index or seq past {MAX_INDEX}: not accepted by the generative worker")
    return ChunkOp(delta.message_index, delta.role, delta.seq, None if delta.reasoning else delta.text,
                   delta.final, delta.tenant)


# --- drafts ---------------------------------------------------------------------------------
@dataclass
class MessageDraft:
    role: str
    next_seq: int = 0                                   # chunks 0..next_seq-1 are in head/tail
    held: dict[int, str | None] = field(default_factory=dict)   # chunks ahead of a missing seq
    held_chars: int = 0
    final_seq: int | None = None
    head: list[str] = field(default_factory=list)
    head_chars: int = 0
    tail: deque[str] = field(default_factory=deque)
    tail_chars: int = 0                                 # counts tail[0][tail_skip:] onwards
    tail_skip: int = 0                                  # characters of tail[0] already dropped
    elided_chars: int = 0
    text: str | None = None                             # set once every chunk 0..final_seq arrived
    complete: bool = False
    ruled: bool = False                                 # a ruling for this message was delivered

    def append(self, text: str, limits: DraftLimits) -> None:
        """Add contiguous text: amortised O(len(text)) whatever the message's length."""
        room = limits.head_chars - self.head_chars
        if room > 0:
            piece = text[:room]
            self.head.append(piece)
            self.head_chars += len(piece)
            text = text[room:]
        if not text:
            return
        self.tail.append(text)
        self.tail_chars += len(text)
        excess = self.tail_chars - limits.tail_chars
        while excess > 0:
            first = len(self.tail[0]) - self.tail_skip
            if first <= excess:
                self.tail.popleft()
                self.tail_skip = 0
                dropped = first
            else:
                self.tail_skip += excess   # a lazy cut: slicing the piece per delta would cost O(piece)
                dropped = excess
            self.tail_chars -= dropped
            self.elided_chars += dropped
            excess -= dropped

    def finish(self) -> None:
        tail = "".join(self.tail)[self.tail_skip:]
        head = "".join(self.head)
        self.text = head + DRAFT_ELISION.format(n=self.elided_chars) + tail if self.elided_chars else head + tail
        self.complete = True
        self.head, self.tail, self.held = [], deque(), {}
        self.head_chars = self.tail_chars = self.tail_skip = self.held_chars = 0


@dataclass
class ConversationDraft:
    tenant: str | None = None
    messages: dict[int, MessageDraft] = field(default_factory=dict)
    partition: int = 0                  # of guard.in and the changelog
    next_record: int = 0                # sequence number of its next changelog record
    last_seen_s: float = 0.0            # wall clock of its last record (idle expiry)


def apply_delta(draft: ConversationDraft, delta: TokenDelta, limits: DraftLimits = DraftLimits()) -> bool:
    """Add one chunk; True when the draft changed. Raises AssemblyError on contradictions and limits."""
    return apply_chunk(draft, chunk_op(delta), limits)


def apply_chunk(draft: ConversationDraft, op: ChunkOp, limits: DraftLimits) -> bool:
    """Every check comes before the first change, so a rejected chunk leaves the draft as it was."""
    message = draft.messages.get(op.message_index)
    if message is None:
        if len(draft.messages) >= limits.max_messages:
            raise AssemblyError(f"conversation holds {len(draft.messages)} messages, the limit "
                                f"(gen_max_messages); message {op.message_index} not accepted")
        message = MessageDraft(role=op.role)
        _check_chunk(message, op, limits)
        draft.messages[op.message_index] = message
    elif message.role != op.role:
        raise AssemblyError(f"message {op.message_index} is a {message.role} message; a chunk says {op.role}")
    elif not _check_chunk(message, op, limits):
        return False
    if op.tenant is not None and draft.tenant is None:
        draft.tenant = op.tenant
    if op.seq < message.next_seq:    # the final flag on a repeat of the last assembled chunk
        message.final_seq = op.seq
        message.finish()
        return True
    if op.final:
        message.final_seq = op.seq
    if op.seq == message.next_seq:
        message.append(op.text or "", limits)
        message.next_seq += 1
        while message.next_seq in message.held:
            text = message.held.pop(message.next_seq)
            message.held_chars -= len(text or "")
            message.append(text or "", limits)
            message.next_seq += 1
    elif op.seq not in message.held:
        message.held[op.seq] = op.text
        message.held_chars += len(op.text or "")
    if message.final_seq is not None and message.next_seq == message.final_seq + 1:
        message.finish()
    return True


def _check_chunk(message: MessageDraft, op: ChunkOp, limits: DraftLimits) -> bool:
    """False for a repeat that changes nothing; AssemblyError for a contradiction or a limit."""
    index = op.message_index
    if message.complete:
        if message.final_seq is not None and op.seq <= message.final_seq:
            return False   # a repeat of a chunk of a finished message: already applied
        raise AssemblyError(f"chunk seq {op.seq} arrived after message {index} was complete at seq "
                            f"{message.final_seq}")
    if op.seq < message.next_seq:
        # Already assembled (its text is no longer held to compare): a repeat, or the final flag
        # arriving on a repeat of the last chunk.
        if not op.final or message.final_seq == op.seq:
            return False
        if message.final_seq is not None:
            raise AssemblyError(f"message {index} has final chunks at seq {message.final_seq} and {op.seq}")
        if op.seq != message.next_seq - 1 or message.held:
            raise AssemblyError(f"final seq {op.seq} of message {index} is below a chunk already received")
        return True
    if op.seq in message.held:
        if message.held[op.seq] != op.text:
            raise AssemblyError(f"chunk seq {op.seq} of message {index} arrived twice with different text")
        if not op.final or message.final_seq == op.seq:
            return False
    if op.final:
        if message.final_seq is not None and message.final_seq != op.seq:
            raise AssemblyError(f"message {index} has final chunks at seq {message.final_seq} and {op.seq}")
        if any(seq > op.seq for seq in message.held):
            raise AssemblyError(f"final seq {op.seq} of message {index} is below a chunk already received")
    elif message.final_seq is not None and op.seq > message.final_seq:
        raise AssemblyError(f"chunk seq {op.seq} is past the final seq {message.final_seq} of message {index}")
    if (op.seq > message.next_seq and op.seq not in message.held
            and message.held_chars + len(op.text or "") > limits.max_held_chars):
        raise AssemblyError(f"message {index} holds {message.held_chars} characters ahead of missing seq "
                                f"{message.next_seq}; chunk seq {op.seq} would pass the limit (gen_max_held_chars)")
    return True


def apply_ruled(draft: ConversationDraft, op: RuledOp) -> bool:
    message = draft.messages.get(op.message_index)
    if message is None or message.ruled:
        return False
    message.ruled = True
    if message.role == "assistant":
        message.text = ""    # never context for another ruling: free it
    return True


def _user_context(draft: ConversationDraft, index: int) -> str:
    for earlier in range(index - 1, -1, -1):
        message = draft.messages[earlier]
        if message.role == "user":
            return message.text or ""
    return ""


def _history_complete(draft: ConversationDraft, index: int) -> bool:
    if index > len(draft.messages):
        return False    # some lower index is missing (and range() below stays small)
    return all(i in draft.messages and draft.messages[i].complete for i in range(index))


def ready_for_ruling(draft: ConversationDraft) -> dict[int, ModerationRequest]:
    """Unruled complete user/assistant messages whose context is settled, with their requests."""
    ready: dict[int, ModerationRequest] = {}
    for index in sorted(draft.messages):
        message = draft.messages[index]
        if message.ruled or message.text is None:
            continue
        if message.role == "user":
            ready[index] = prompt_request(message.text, elided_chars=message.elided_chars)
        elif message.role == "assistant" and _history_complete(draft, index):
            context = _user_context(draft, index)
            context_elided = next((draft.messages[i].elided_chars for i in range(index - 1, -1, -1)
                                   if draft.messages[i].role == "user"), 0)
            ready[index] = response_request(context, message.text,
                                            elided_chars=message.elided_chars + context_elided)
    return ready


def stranded_messages(draft: ConversationDraft) -> list[int]:
    """Complete assistant messages that can never be ruled because lower indices are missing."""
    return [i for i, m in sorted(draft.messages.items())
            if m.role == "assistant" and m.complete and not m.ruled and not _history_complete(draft, i)]


def incomplete_messages(draft: ConversationDraft) -> list[int]:
    return [i for i, m in sorted(draft.messages.items()) if not m.complete]
