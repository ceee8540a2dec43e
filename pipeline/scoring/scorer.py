"""Scoring one conversation's TokenDeltas into Verdicts (docs/token-stream.md), engine-agnostic.

The caller (stream worker, ``moderate --engine onnx``, tests) drives it:
``apply`` each delta, then ``pending`` -> engine -> ``absorb`` until ``pending`` is None, and
``encode_state`` for durable storage. The state is a pure function of the deltas applied (plus the
model outputs), so replaying the same deltas rebuilds it, and every verdict's content (all but
``ts_ms``/``latency_ms``) is independent of how deltas were grouped into engine calls: progress
watermarks are tied to scored-token indices, flags to the debounced pair, finals to the message end.

Ordering: per conversation, deltas are applied in (message_index, seq) order; message i+1 begins
after message i's final chunk. Duplicates are ignored. A delta that arrives early is held (in the
state, so it is durable) until the gap fills, or reported by ``expire`` once the gap is older than
the timeout: all held deltas wait on the same first missing position, so they are reported together,
the deadline counted from the earliest of them (so is a conversation's first delta that is not
message 0 seq 0). Times are the caller's log times (input record timestamps), so a replay of the
same records rebuilds the same held set with the same deadline. ``end`` closes the conversation for
good: it reports what is still held and a message left without its final chunk, and every later
delta of the id is reported (ids are single-use; see docs/guarantees.md). A delta after its
message's final chunk, a role change inside a message,
reasoning on a non-assistant message, reasoning after content, or reasoning on an assistant message
no user message precedes (the template drops it) is reported as a Rejection; its text is dropped
but its place in the order (and ``final``) still counts, so the conversation goes on.

More than one engine round per batch: when a message begins while earlier assistant tokens still
await outputs and the history must be re-rendered (see :mod:`pipeline.scoring.render`), the new
deltas are queued and rendered by the ``absorb`` that completes the earlier message. Callers loop
``pending``/``absorb`` until ``pending`` returns None; each extra round is one such message boundary.

Context limit (``max_context_tokens``): see :mod:`pipeline.scoring.render`. Messages cut short get
their final verdict on what fit, plus one Rejection saying so; later messages are not judged and
each is reported once. Nothing crashes.

Verdicts: ``flag`` at the first debounced pair of an assistant message and at an escalation to
unsafe; ``final`` per user and assistant message; ``progress`` every ``progress_every_tokens``
scored assistant tokens while nothing blocking was flagged, with ``cleared_through_seq`` = the last
seq whose every character lies in tokens already scored (only emitted once that is >= 0).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable

import msgspec
import numpy as np
from tokenizers import Tokenizer

from pipeline.decision import Decision, PairEvent, decide_prompt, judge_tokens
from pipeline.engine.types import FeedRequest, HeadOutputs
from pipeline.labels import LabelMaps
from pipeline.policy import PolicyBook
from pipeline.scoring.render import StreamRenderer
from pipeline.scoring.state import (
    ConversationState,
    HeldDelta,
    MessageScoring,
    Rejection,
    SourceRef,
    pack,
    unpack,
)
from pipeline.scoring.verdicts import final_verdict, flag_verdict, progress_verdict
from pipeline.state.keys import conversation_key
from pipeline.tokens.text import TextTokenizer
from schemas.messages import Role, TokenDelta, Verdict

__all__ = ["AFTER_END", "ConversationState", "Rejection", "Scorer", "SourceRef", "gap_since_ms", "held_bytes"]

# One reason, whichever way the deltas were batched: a delta that follows ``end`` in the same
# micro-batch and one that meets the stored tombstone later are the same input (docs/guarantees.md).
AFTER_END = ("delta after the conversation's end: a conversation id is single-use, "
             "start a new conversation under a new id")

_RISK_CODES = {"safe": 0, "unsafe": 1, "controversial": 2}
_RISK_NAMES = ("safe", "unsafe", "controversial")


class Scorer:
    def __init__(
        self,
        tokenizer: Tokenizer | TextTokenizer,
        labels: LabelMaps,
        policies: PolicyBook,
        model_name: str,
        *,
        progress_every_tokens: int = 16,
        max_context_tokens: int = 8192,
        include_token_labels: bool = False,
        max_held_deltas: int = 1_000,
        max_held_bytes: int = 1024 * 1024,
    ) -> None:
        self.text = TextTokenizer.of(tokenizer)
        self.labels = labels
        self.policies = policies
        self.model_name = model_name
        self.progress_every_tokens = progress_every_tokens
        self.include_token_labels = include_token_labels
        self.renderer = StreamRenderer(self.text, max_context_tokens)
        self.max_held_deltas = max_held_deltas
        self.max_held_bytes = max_held_bytes
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ConversationState)

    # -- state ----------------------------------------------------------------------------------
    def new_state(self, conversation_id: str, tenant: str | None) -> ConversationState:
        return ConversationState(conversation_id, tenant, conversation_key(tenant, conversation_id))

    def encode_state(self, state: ConversationState) -> bytes:
        return self._encoder.encode(state)

    def decode_state(self, data: bytes) -> ConversationState:
        return self._decoder.decode(data)

    # -- input ----------------------------------------------------------------------------------
    def apply(
        self, state: ConversationState, delta: TokenDelta, raw: bytes, source: SourceRef, now_ms: int,
    ) -> list[Rejection]:
        """Take one delta (any order); return what must go to the DLQ. ``type: end`` goes to :meth:`end`.

        ``now_ms`` is the delta's log time (the input record's timestamp): a held delta's deadline
        counts from it.
        """
        out = self._drain_notes(state)
        if state.ended and delta.type != "end":
            return [*out, Rejection(AFTER_END, raw, source, state.conversation_id)]
        if delta.type == "end" or delta.message_index is None or delta.seq is None:
            return out
        item = HeldDelta(delta, raw, source, now_ms)
        state.last_source = source
        where = self._position(state, delta.message_index, delta.seq)
        if where == "duplicate":
            return out
        if where == "after-final":
            return [*out, self._reject(state, item, f"delta after the final chunk of message {delta.message_index} "
                                                     f"(seq {delta.seq} > final seq {state.next_seq - 1})")]
        if where == "early":
            if not any(h.delta.message_index == delta.message_index and h.delta.seq == delta.seq for h in state.held):
                over = self._held_limit(state, item)
                if over is not None:
                    return [*out, self._reject(state, item, over)]
                state.held.append(item)
            return out
        out += self._accept(state, item)
        return out + self._release_held(state)

    def expire(self, state: ConversationState, now_ms: int, gap_timeout_ms: int) -> list[Rejection]:
        """Report every held delta once the gap they wait on is ``gap_timeout_ms`` old.

        The gap's age counts from the earliest held delta (when the gap was first seen): all held
        deltas wait on the same first missing position, so they expire together.
        """
        out = self._drain_notes(state)
        since = gap_since_ms(state)
        if since is None or now_ms - since < gap_timeout_ms:
            return out
        waiting = self._waiting_for(state)
        expired, state.held = state.held, []
        for h in expired:
            out.append(self._reject(state, h, f"gap: message {h.delta.message_index} seq {h.delta.seq} waited "
                                              f"{gap_timeout_ms} ms for {waiting}, which never arrived"))
        return out

    def _held_limit(self, state: ConversationState, item: HeldDelta) -> str | None:
        """Why ``item`` may not be held too (the conversation's state stays as it is), or None."""
        if len(state.held) >= self.max_held_deltas:
            return (f"held deltas limit: {self.max_held_deltas} deltas of this conversation already wait for "
                    f"a gap; message {item.delta.message_index} seq {item.delta.seq} is not held")
        held = held_bytes(state)
        if held + len(item.raw) > self.max_held_bytes:
            return (f"held bytes limit: {held} bytes of this conversation already wait for a gap, "
                    f"+{len(item.raw)} > {self.max_held_bytes}; message {item.delta.message_index} "
                    f"seq {item.delta.seq} is not held")
        return None

    def end(self, state: ConversationState, raw: bytes, source: SourceRef) -> list[Rejection]:
        """``type: end``: close the conversation; report what can no longer be judged.

        Held deltas are reported (their gap can never fill now), and so is a message still open (its
        final chunk never came, so it gets no final verdict): one record, the ``end`` itself. What
        was accepted before stays pending and is scored to the end by the caller's engine rounds.
        A second ``end`` changes nothing.
        """
        out = self._drain_notes(state)
        if state.ended:
            return out
        state.ended = True
        if state.held:
            waiting = self._waiting_for(state)
            held, state.held = state.held, []
            out += [self._reject(state, h, f"gap at end: message {h.delta.message_index} seq {h.delta.seq} was "
                                           f"held for {waiting}, which never arrived before the conversation's end")
                    for h in held]
        if state.message_open:
            out.append(Rejection(
                f"unfinished message at end: message {state.message} ended at seq {state.next_seq - 1} without "
                "its final chunk; it gets no final verdict", raw, source, state.conversation_id))
        return out

    @staticmethod
    def tombstone(state: ConversationState) -> ConversationState:
        """What an ended conversation leaves in the store: enough to report later deltas of its id."""
        return ConversationState(state.conversation_id, state.tenant, state.key, ended=True)

    @staticmethod
    def _waiting_for(state: ConversationState) -> str:
        if state.message < 0:
            return "the conversation's first delta (message 0, seq 0)"
        if state.message_open:
            return f"message {state.message} seq {state.next_seq}"
        return f"message {state.message + 1} seq 0"

    def _position(self, state: ConversationState, message: int, seq: int) -> str:
        if message < state.message or (message == state.message and seq < state.next_seq):
            return "duplicate"
        if message == state.message and not state.message_open:
            return "after-final"
        if state.message_open and message == state.message and seq == state.next_seq:
            return "next"
        if not state.message_open and message == state.message + 1 and seq == 0:
            return "next"
        return "early"

    def _release_held(self, state: ConversationState) -> list[Rejection]:
        out: list[Rejection] = []
        progressed = True
        while progressed:
            progressed = False
            for h in list(state.held):
                where = self._position(state, int(h.delta.message_index or 0), int(h.delta.seq or 0))
                if where == "early":
                    continue
                state.held.remove(h)
                if where == "next":
                    out += self._accept(state, h)
                    progressed = True
                elif where == "after-final":
                    out.append(self._reject(state, h, f"delta after the final chunk of message "
                                                      f"{h.delta.message_index}"))
        return out

    def _accept(self, state: ConversationState, item: HeldDelta) -> list[Rejection]:
        """The delta is next in order: validate it, advance the order, render it (or queue it)."""
        delta = item.delta
        problem = None
        if delta.seq == 0:
            state.message, state.message_open, state.message_role = int(delta.message_index or 0), True, str(delta.role)
            state.next_seq, state.saw_content = 1, False
            state.message_think = state.message_role == "assistant" and state.accepted_user
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
        if not item.delta.reasoning:
            state.saw_content = True   # what renders as content ends the think block, rejected or not
        out = [self._reject(state, item, problem)] if problem is not None else []
        if state.queued or (delta.seq == 0 and self.renderer.must_wait(state, state.message_role)):
            state.queued.append(item)
            return out
        return out + self._render(state, item)

    def _render(self, state: ConversationState, item: HeldDelta) -> list[Rejection]:
        delta = item.delta
        notes: list[str] = []
        if delta.seq == 0:
            notes += self.renderer.begin(state, delta)
        record = self._open_record(state)
        offset = record.text_len if record is not None else 0
        if record is not None:
            record.delta_starts += pack([record.text_len])
            record.text_len += len(delta.text)
            record.last_ts_ms = delta.ts_ms if delta.ts_ms is not None else record.last_ts_ms
        notes += self.renderer.add_text(state, delta, offset)
        if delta.final:
            notes += self.renderer.close(state, int(delta.seq or 0))
        return [self._reject(state, item, note) for note in notes]

    def _render_queued(self, state: ConversationState) -> None:
        while state.queued:
            head = state.queued[0]
            if head.delta.seq == 0 and self.renderer.must_wait(state, str(head.delta.role)):
                return
            state.queued.pop(0)
            state.notes += self._render(state, head)

    @staticmethod
    def _open_record(state: ConversationState) -> MessageScoring | None:
        if state.open is None or state.open.skipped:
            return None
        for record in reversed(state.scoring):
            if record.index == state.open.index:
                return record
        return None

    @staticmethod
    def _drain_notes(state: ConversationState) -> list[Rejection]:
        notes, state.notes = state.notes, []
        return notes

    @staticmethod
    def _reject(state: ConversationState, item: HeldDelta, reason: str) -> Rejection:
        return Rejection(reason, item.raw, item.source, state.conversation_id)

    # -- model ----------------------------------------------------------------------------------
    def pending(self, state: ConversationState) -> FeedRequest | None:
        """The whole stream and the first position whose outputs are wanted, or None when up to date."""
        if state.queued and state.absorbed >= len(state.token_ids) // 4:
            self._render_queued(state)   # cannot stay queued with nothing to absorb; kept for safety
        tokens = unpack(state.token_ids)
        if state.absorbed >= len(tokens):
            return None
        return FeedRequest(state.key, tokens.tolist(), state.absorbed)

    def absorb(self, state: ConversationState, outputs: HeadOutputs, now_ms: int) -> list[Verdict]:
        """Outputs for positions ``[absorbed, absorbed + len(outputs))`` -> verdicts, in message order."""
        start, count = state.absorbed, len(outputs)
        verdicts: list[Verdict] = []
        for record in state.scoring:
            positions = unpack(record.positions)
            take = bisect_left(positions, start + count) - bisect_left(positions, start)
            if take:
                rows = np.asarray(positions[:take], dtype=np.int64) - start
                spans = unpack(record.spans)
                verdicts += self._score(state, record, outputs, rows, spans[: 2 * take], now_ms)
                record.positions, record.spans = pack(positions[take:]), pack(spans[2 * take:])
        state.absorbed = start + count
        for record in [r for r in state.scoring if r.closed and not r.positions]:
            verdicts.append(self._final(state, record, now_ms))
            state.scoring.remove(record)
        self._render_queued(state)
        return verdicts

    def _score(
        self, state: ConversationState, record: MessageScoring, outputs: HeadOutputs, rows: np.ndarray,
        spans: Iterable[int], now_ms: int,
    ) -> list[Verdict]:
        pairs = list(spans)
        token_spans = list(zip(pairs[0::2], pairs[1::2], strict=True))
        if record.role == "user":
            decision = decide_prompt(outputs.query_risk_logits[rows[-1:]], outputs.query_category_logits[rows[-1:]],
                                     self.labels)
            record.prompt = decision.risk
            record.prompt_category = decision.category
            record.prompt_scores = decision.scores
            record.last_span = token_spans[-1]
            record.done += 1
            return []
        judged = judge_tokens(outputs.risk_logits[rows], outputs.category_logits[rows],
                              self.labels.response_risk, self.labels.response_category)
        policy = self.policies.for_tenant(state.tenant)
        verdicts: list[Verdict] = []
        for token, span in zip(judged, token_spans, strict=True):
            index = record.done
            record.done += 1
            record.last_span = span
            if self.include_token_labels:
                record.labels += bytes([_RISK_CODES[token.risk]])
            event = record.debouncer.push(token, policy.rule)   # the tenant's thresholds, if any
            if event is not None:
                record.event_spans[index] = span
                verdicts.append(self._flag(state, record, event, span, now_ms))
                if policy.action(event.risk, event.category) == "block":
                    record.blocked = True
            every = self.progress_every_tokens
            if every > 0 and (index + 1) % every == 0 and not record.blocked:
                cleared = self._cleared_through(record, span[1])
                if cleared >= 0:
                    level = record.debouncer.first_unsafe or record.debouncer.first_controversial
                    verdicts.append(progress_verdict(
                        conversation_id=state.conversation_id, message_index=record.index, role="assistant",
                        token_index=index, cleared_through_seq=cleared, model=self.model_name, ts_ms=now_ms,
                        risk=level.risk if level else "safe", tenant=state.tenant, delta_ts_ms=record.last_ts_ms,
                    ))
        return verdicts

    def _flag(
        self, state: ConversationState, record: MessageScoring, event: PairEvent, span: tuple[int, int], now_ms: int,
    ) -> Verdict:
        return flag_verdict(
            conversation_id=state.conversation_id, message_index=record.index, event=event,
            policy=self.policies.for_tenant(state.tenant), model=self.model_name, ts_ms=now_ms,
            seq=self._seq_at(record, span[0]), char_offset=span[0], tenant=state.tenant,
            delta_ts_ms=record.last_ts_ms,
        )

    def _final(self, state: ConversationState, record: MessageScoring, now_ms: int) -> Verdict:
        if record.role == "user":
            decision = Decision(record.prompt or "safe", record.prompt_category, 0 if record.done else None,
                                dict(record.prompt_scores), [record.prompt] if record.prompt else [])
        else:
            labels = [_RISK_NAMES[code] for code in record.labels]
            decision = record.debouncer.decision(labels)
        span = None
        if decision.token_index is not None:
            span = record.event_spans.get(decision.token_index, record.last_span)
        return final_verdict(
            conversation_id=state.conversation_id, message_index=record.index, role=_role(record.role),
            decision=decision, policy=self.policies.for_tenant(state.tenant), model=self.model_name, ts_ms=now_ms,
            tenant=state.tenant, seq=self._seq_at(record, span[0]) if span else None,
            char_offset=span[0] if span else None, cleared_through_seq=record.final_seq,
            delta_ts_ms=record.last_ts_ms, include_token_labels=self.include_token_labels,
        )

    @staticmethod
    def _seq_at(record: MessageScoring, char_offset: int) -> int:
        starts = unpack(record.delta_starts)
        return max(0, bisect_right(starts, char_offset) - 1)

    @staticmethod
    def _cleared_through(record: MessageScoring, covered_end: int) -> int:
        """The last seq whose characters all lie before ``covered_end`` (-1: none)."""
        starts = unpack(record.delta_starts)
        last = bisect_left(starts, covered_end) - 1   # deltas that begin inside the covered text
        if last < 0:
            return -1
        end = starts[last + 1] if last + 1 < len(starts) else record.text_len
        return last if end <= covered_end else last - 1


def gap_since_ms(state: ConversationState) -> int | None:
    """Log time the current gap was first seen (its earliest held delta); None: nothing held."""
    return min((h.received_ms for h in state.held), default=None)


def held_bytes(state: ConversationState) -> int:
    """Bytes of original input the state holds for a gap (what a per-conversation cap would bound)."""
    return sum(len(h.raw) for h in state.held)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _role(role: str) -> Role:
    if role not in ("system", "user", "assistant"):
        raise ValueError(f"unknown role {role!r}")
    return role  # type: ignore[return-value]
