"""The verdicts stage: the one place stream Verdicts are built.

Input: a message's scoring record (:class:`MessageScoring`) and what the judge decided (a debounced
pair, a progress watermark, the end of the message). Output: :class:`Verdict`. Objects are built
only for verdicts that are emitted.

``verdict_id`` is deterministic, ``{conversation}/{message}/stream/{kind}/{position}``: position is
the scored-token index for ``progress`` and ``flag`` and the word ``end`` for ``final`` (one final per
message). Everything but ``ts_ms`` and ``latency_ms`` is a function of the input alone, so a replay
produces identical verdicts.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Literal

from pipeline.decision import Decision, PairEvent
from pipeline.policy import TenantPolicy
from pipeline.scoring.state import ConversationState, MessageScoring, unpack
from schemas.messages import Risk, Role, Verdict, VerdictKind

_RISK_NAMES = ("safe", "unsafe", "controversial")   # the codes of MessageScoring.labels


def verdict_id(conversation_id: str, message_index: int, kind: VerdictKind, position: int | str) -> str:
    return f"{conversation_id}/{message_index}/stream/{kind}/{position}"


def _latency(now_ms: int, delta_ts_ms: int | None) -> int | None:
    return None if delta_ts_ms is None else max(0, now_ms - delta_ts_ms)


def final_verdict(
    *,
    conversation_id: str,
    message_index: int,
    role: Role,
    decision: Decision,
    policy: TenantPolicy,
    model: str,
    ts_ms: int,
    tenant: str | None = None,
    seq: int | None = None,
    char_offset: int | None = None,
    cleared_through_seq: int | None = None,
    delta_ts_ms: int | None = None,
    include_token_labels: bool = False,
) -> Verdict:
    """The end-of-message verdict. ``cleared_through_seq`` is dropped when the action is block."""
    action = policy.action(decision.risk, decision.category)
    return Verdict(
        verdict_id=verdict_id(conversation_id, message_index, "final", "end"),
        conversation_id=conversation_id, message_index=message_index, role=role, source="stream",
        kind="final", risk=decision.risk, action=action, model=model, ts_ms=ts_ms,
        category=decision.category if decision.risk != "safe" else None,
        token_index=decision.token_index, seq=seq, char_offset=char_offset,
        cleared_through_seq=cleared_through_seq if action == "allow" else None,
        scores=dict(decision.scores) or None, latency_ms=_latency(ts_ms, delta_ts_ms), tenant=tenant,
        token_labels=list(decision.token_labels) if include_token_labels else None,  # type: ignore[arg-type]
    )


def flag_verdict(
    *,
    conversation_id: str,
    message_index: int,
    event: PairEvent,
    policy: TenantPolicy,
    model: str,
    ts_ms: int,
    seq: int,
    char_offset: int,
    tenant: str | None = None,
    delta_ts_ms: int | None = None,
) -> Verdict:
    """A debounced pair in an assistant message (the first one, or an escalation to unsafe)."""
    return Verdict(
        verdict_id=verdict_id(conversation_id, message_index, "flag", event.token_index),
        conversation_id=conversation_id, message_index=message_index, role="assistant", source="stream",
        kind="flag", risk=event.risk, action=policy.action(event.risk, event.category), model=model, ts_ms=ts_ms,
        category=event.category, token_index=event.token_index, seq=seq, char_offset=char_offset,
        scores=dict(event.scores), latency_ms=_latency(ts_ms, delta_ts_ms), tenant=tenant,
    )


def progress_verdict(
    *,
    conversation_id: str,
    message_index: int,
    role: Role,
    token_index: int,
    cleared_through_seq: int,
    model: str,
    ts_ms: int,
    risk: Risk = "safe",
    tenant: str | None = None,
    delta_ts_ms: int | None = None,
) -> Verdict:
    """A watermark: every chunk up to ``cleared_through_seq`` has been scored and allowed.

    ``risk`` is the level the message's debounce has reached so far (allowed by the tenant's policy,
    or no progress would be emitted).
    """
    action: Literal["allow"] = "allow"
    return Verdict(
        verdict_id=verdict_id(conversation_id, message_index, "progress", token_index),
        conversation_id=conversation_id, message_index=message_index, role=role, source="stream",
        kind="progress", risk=risk, action=action, model=model, ts_ms=ts_ms, token_index=token_index,
        cleared_through_seq=cleared_through_seq, latency_ms=_latency(ts_ms, delta_ts_ms), tenant=tenant,
    )


# -- a message's verdicts, from its scoring record ------------------------------------------------
def message_flag(
    state: ConversationState, record: MessageScoring, event: PairEvent, span: tuple[int, int],
    policy: TenantPolicy, model: str, now_ms: int,
) -> Verdict:
    return flag_verdict(
        conversation_id=state.conversation_id, message_index=record.index, event=event, policy=policy,
        model=model, ts_ms=now_ms, seq=seq_at(record, span[0]), char_offset=span[0], tenant=state.tenant,
        delta_ts_ms=record.last_ts_ms,
    )


def message_progress(
    state: ConversationState, record: MessageScoring, token_index: int, cleared_through_seq: int, model: str,
    now_ms: int,
) -> Verdict:
    level = record.debouncer.first_unsafe or record.debouncer.first_controversial
    return progress_verdict(
        conversation_id=state.conversation_id, message_index=record.index, role="assistant",
        token_index=token_index, cleared_through_seq=cleared_through_seq, model=model, ts_ms=now_ms,
        risk=level.risk if level else "safe", tenant=state.tenant, delta_ts_ms=record.last_ts_ms,
    )


def message_final(
    state: ConversationState, record: MessageScoring, policy: TenantPolicy, model: str, now_ms: int,
    include_token_labels: bool,
) -> Verdict:
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
        decision=decision, policy=policy, model=model, ts_ms=now_ms,
        tenant=state.tenant, seq=seq_at(record, span[0]) if span else None,
        char_offset=span[0] if span else None, cleared_through_seq=record.final_seq,
        delta_ts_ms=record.last_ts_ms, include_token_labels=include_token_labels,
    )


def seq_at(record: MessageScoring, char_offset: int) -> int:
    """The seq of the delta holding message character ``char_offset``."""
    starts = unpack(record.delta_starts)
    return max(0, bisect_right(starts, char_offset) - 1)


def cleared_through(record: MessageScoring, covered_end: int) -> int:
    """The last seq whose characters all lie before ``covered_end`` (-1: none)."""
    starts = unpack(record.delta_starts)
    last = bisect_left(starts, covered_end) - 1   # deltas that begin inside the covered text
    if last < 0:
        return -1
    end = starts[last + 1] if last + 1 < len(starts) else record.text_len
    return last if end <= covered_end else last - 1


def _role(role: str) -> Role:
    if role not in ("system", "user", "assistant"):
        raise ValueError(f"unknown role {role!r}")
    return role  # type: ignore[return-value]
