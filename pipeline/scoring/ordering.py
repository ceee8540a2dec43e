"""The order stage: which deltas of a conversation are accepted, in (message_index, seq) order.

Per conversation, deltas are accepted in (message_index, seq) order; message i+1 begins after
message i's final chunk. Duplicates are ignored. A delta that arrives early is held (in the state,
so it is durable) until the gap fills, or reported by :meth:`Ordering.expire` once the gap is older
than the timeout: all held deltas wait on the same first missing position, so they are reported
together, the deadline counted from the earliest of them (so is a conversation's first delta that
is not message 0 seq 0). Times are the caller's log times (input record timestamps), so a replay of
the same records rebuilds the same held set with the same deadline. ``end`` closes the conversation
for good: it reports what is still held and a message left without its final chunk, and every later
delta of the id is reported (ids are single-use; see docs/guarantees.md).

Validation: a delta after its message's final chunk, a role change inside a message, reasoning on a
non-assistant message, reasoning after content, or reasoning on an assistant message no user message
precedes (the template drops it) is reported as a Rejection; its text is dropped but its place in
the order (and ``final``) still counts, so the conversation goes on.

Input: one decoded delta. Output: :data:`Ordered`, in order, the deltas that are next (to be
rendered) and the rejections, interleaved as they were found (so DLQ records keep one order however
deltas were batched). Writes only the ordering fields of :class:`ConversationState`.
"""

from __future__ import annotations

import msgspec

from pipeline.scoring.state import ConversationState, HeldDelta, Rejection, SourceRef
from schemas.messages import TokenDelta

# One reason, whichever way the deltas were batched: a delta that follows ``end`` in the same
# micro-batch and one that meets the stored tombstone later are the same input (docs/guarantees.md).
AFTER_END = ("delta after the conversation's end: a conversation id is single-use, "
             "start a new conversation under a new id")


# What one delta let through: deltas now in order (it and the held ones it released, to be rendered)
# and rejections, in the order they were found.
Ordered = list[HeldDelta | Rejection]


class Ordering:
    def __init__(self, *, max_held_deltas: int = 1_000, max_held_bytes: int = 1024 * 1024) -> None:
        self.max_held_deltas = max_held_deltas
        self.max_held_bytes = max_held_bytes

    def apply(
        self, state: ConversationState, delta: TokenDelta, raw: bytes, source: SourceRef, now_ms: int,
    ) -> Ordered:
        """Take one delta (any order). ``type: end`` goes to :meth:`end`.

        ``now_ms`` is the delta's log time (the input record's timestamp): a held delta's deadline
        counts from it.
        """
        out: Ordered = []
        if state.ended and delta.type != "end":
            return [Rejection(AFTER_END, raw, source, state.conversation_id)]
        if delta.type == "end" or delta.message_index is None or delta.seq is None:
            return out
        item = HeldDelta(delta, raw, source, now_ms)
        state.last_source = source
        where = _position(state, delta.message_index, delta.seq)
        if where == "duplicate":
            return out
        if where == "after-final":
            out.append(_reject(state, item, f"delta after the final chunk of message "
                                                       f"{delta.message_index} (seq {delta.seq} > final seq "
                                                       f"{state.next_seq - 1})"))
            return out
        if where == "early":
            if not any(h.delta.message_index == delta.message_index and h.delta.seq == delta.seq for h in state.held):
                over = self._held_limit(state, item)
                if over is not None:
                    out.append(_reject(state, item, over))
                    return out
                state.held.append(item)
            return out
        _accept(state, item, out)
        _release_held(state, out)
        return out

    def expire(self, state: ConversationState, now_ms: int, gap_timeout_ms: int) -> list[Rejection]:
        """Report every held delta once the gap they wait on is ``gap_timeout_ms`` old.

        The gap's age counts from the earliest held delta (when the gap was first seen): all held
        deltas wait on the same first missing position, so they expire together.
        """
        since = gap_since_ms(state)
        if since is None or now_ms - since < gap_timeout_ms:
            return []
        waiting = _waiting_for(state)
        expired, state.held = state.held, []
        return [_reject(state, h, f"gap: message {h.delta.message_index} seq {h.delta.seq} waited "
                                  f"{gap_timeout_ms} ms for {waiting}, which never arrived") for h in expired]

    def end(self, state: ConversationState, raw: bytes, source: SourceRef) -> list[Rejection]:
        """``type: end``: close the conversation; report what can no longer be judged.

        Held deltas are reported (their gap can never fill now), and so is a message still open (its
        final chunk never came, so it gets no final verdict): one record, the ``end`` itself. What
        was accepted before stays pending and is scored to the end by the caller's engine rounds.
        A second ``end`` changes nothing.
        """
        if state.ended:
            return []
        state.ended = True
        out: list[Rejection] = []
        if state.held:
            waiting = _waiting_for(state)
            held, state.held = state.held, []
            out += [_reject(state, h, f"gap at end: message {h.delta.message_index} seq {h.delta.seq} was "
                                      f"held for {waiting}, which never arrived before the conversation's end")
                    for h in held]
        if state.message_open:
            out.append(Rejection(
                f"unfinished message at end: message {state.message} ended at seq {state.next_seq - 1} without "
                "its final chunk; it gets no final verdict", raw, source, state.conversation_id))
        return out

    def _held_limit(self, state: ConversationState, item: HeldDelta) -> str | None:
        """Why ``item`` may not be held too (the conversation's state stays as it is), or None."""
        if len(state.held) >= self.max_held_deltas:
            return (f"held deltas limit: {self.max_held_deltas} deltas of this conversation already wait for "
                    f"a gap; message {item.delta.message_index} seq {item.delta.seq} is not held")
        held = held_bytes(state)
        if held + len(item.raw) > self.max_held_bytes:
            return (f"held bytes limit: {held} bytes of this conversation's input already wait for a gap, "
                    f"+{len(item.raw)} > {self.max_held_bytes}; message {item.delta.message_index} "
                    f"seq {item.delta.seq} is not held")
        return None


def gap_since_ms(state: ConversationState) -> int | None:
    """Log time the current gap was first seen (its earliest held delta); None: nothing held."""
    return min((h.received_ms for h in state.held), default=None)


def held_bytes(state: ConversationState) -> int:
    """Bytes of original input the state holds for a gap (what a per-conversation cap would bound)."""
    return sum(len(h.raw) for h in state.held)


def _waiting_for(state: ConversationState) -> str:
    if state.message < 0:
        return "the conversation's first delta (message 0, seq 0)"
    if state.message_open:
        return f"message {state.message} seq {state.next_seq}"
    return f"message {state.message + 1} seq 0"


def _position(state: ConversationState, message: int, seq: int) -> str:
    if message < state.message or (message == state.message and seq < state.next_seq):
        return "duplicate"
    if message == state.message and not state.message_open:
        return "after-final"
    if state.message_open and message == state.message and seq == state.next_seq:
        return "next"
    if not state.message_open and message == state.message + 1 and seq == 0:
        return "next"
    return "early"


def _release_held(state: ConversationState, out: Ordered) -> None:
    progressed = True
    while progressed:
        progressed = False
        for h in list(state.held):
            where = _position(state, int(h.delta.message_index or 0), int(h.delta.seq or 0))
            if where == "early":
                continue
            state.held.remove(h)
            if where == "next":
                _accept(state, h, out)
                progressed = True
            elif where == "after-final":
                out.append(_reject(state, h, f"delta after the final chunk of message "
                                                        f"{h.delta.message_index}"))


def _accept(state: ConversationState, item: HeldDelta, out: Ordered) -> None:
    """The delta is next in order: validate it and advance the order; it goes on to be rendered."""
    delta = item.delta
    problem = None
    if delta.seq == 0:
        state.message, state.message_open, state.message_role = int(delta.message_index or 0), True, str(delta.role)
        state.next_seq, state.saw_content = 1, False
        state.accepted_user = state.accepted_user or state.message_role == "user"
    else:
        state.next_seq += 1
        if delta.role != state.message_role:
            problem = (f"role changed inside message {state.message}: seq {delta.seq} says {delta.role!r}, "
                       f"seq 0 said {state.message_role!r}")
    if problem is None and not _is_utf8(delta.text):
        problem = f"text of message {state.message} seq {delta.seq} holds unpaired surrogates: send UTF-8 text"
    if problem is None and delta.reasoning:
        if state.message_role != "assistant":
            problem = f"reasoning text on a {state.message_role} message: only assistant messages think"
        elif state.saw_content:
            problem = f"reasoning after content in message {state.message} (seq {delta.seq}): think first"
        elif not state.message_think:
            problem = (f"reasoning in message {state.message}, which no user message precedes: the Qwen3 "
                       "template drops it, so it cannot be judged")
    if delta.final:
        state.message_open = False
    if problem is not None:
        keep_reasoning = delta.reasoning and not state.saw_content and state.message_think
        item = HeldDelta(msgspec.structs.replace(delta, text="", role=state.message_role,
                                                 reasoning=keep_reasoning), item.raw, item.source,
                         item.received_ms)
        out.append(_reject(state, item, problem))
    if not item.delta.reasoning:
        state.saw_content = True   # what renders as content ends the think block, rejected or not
    out.append(item)


def _reject(state: ConversationState, item: HeldDelta, reason: str) -> Rejection:
    return Rejection(reason, item.raw, item.source, state.conversation_id)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
