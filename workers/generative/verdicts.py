"""The generative Verdict for one message: deterministic id, ruling fields, tenant policy action."""

from __future__ import annotations

from typing import Literal

from pipeline.gen.moderator import GenRuling
from pipeline.policy import PolicyBook
from schemas.messages import Verdict

SOURCE: Literal["generative"] = "generative"
SCORE_DECIMALS = 3


def generative_verdict_id(conversation_id: str, message_index: int) -> str:
    """One ruling per message: position 0 is the only one a generative final verdict has."""
    return f"{conversation_id}/{message_index}/{SOURCE}/final/0"


def generative_verdict(*, conversation_id: str, message_index: int, role: str, tenant: str | None,
                       ruling: GenRuling, policies: PolicyBook, model: str, now_ms: int,
                       sent_ms: int | None = None) -> Verdict:
    risk = ruling.ruling.risk
    categories = list(ruling.ruling.categories)
    # The policy sees every category named: a tenant's allow-list must cover all of them to allow.
    action = policies.for_tenant(tenant).action(risk, categories or None)
    return Verdict(
        verdict_id=generative_verdict_id(conversation_id, message_index),
        conversation_id=conversation_id,
        message_index=message_index,
        role=role,  # type: ignore[arg-type]
        source=SOURCE,
        kind="final",
        risk=risk,
        action=action,
        model=model,
        ts_ms=now_ms,
        category=ruling.ruling.top_category,
        categories=categories,
        refusal=ruling.ruling.refusal,
        # Rounded: a ruling recomputed in a different batch differs only in float noise far below this.
        scores={k: round(v, SCORE_DECIMALS) for k, v in ruling.scores.items()},
        latency_ms=max(0, now_ms - sent_ms) if sent_ms is not None else None,
        tenant=tenant,
        truncated_tokens=ruling.truncated_tokens or None,
    )
