"""The one place stream Verdicts are built.

``verdict_id`` is deterministic, ``{conversation}/{message}/stream/{kind}/{position}``: position is
the scored-token index for ``progress`` and ``flag`` and the word ``end`` for ``final`` (one final per
message). Everything but ``ts_ms`` and ``latency_ms`` is a function of the input alone, so a replay
produces identical verdicts.
"""

from __future__ import annotations

from typing import Literal

from pipeline.decision import Decision, PairEvent
from pipeline.policy import TenantPolicy
from schemas.messages import Risk, Role, Verdict, VerdictKind


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
