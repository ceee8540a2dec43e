"""Helpers that play a frontend (deltas) and a worker (apply / pending / absorb) around a Scorer."""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pipeline.chunking import Chunker
from pipeline.conversations import Conversation, Message
from pipeline.decision import decide_prompt, decide_response
from pipeline.deltas import conversation_deltas as frontend_deltas
from pipeline.labels import LabelMaps
from pipeline.scoring.scorer import ConversationState, Rejection, Scorer, SourceRef
from pipeline.tokens.chat import render_context
from pipeline.tokens.text import TextTokenizer
from schemas.messages import TokenDelta, Verdict, encode
from tests.scoring.hash_engine import HashEngine


def conversation_deltas(
    conversation_id: str, messages: Sequence[Message], size: int | None = None, rng: random.Random | None = None,
    tenant: str | None = None,
) -> list[TokenDelta]:
    """A frontend's deltas (:func:`pipeline.deltas.conversation_deltas`, no ``end``), stamped with increasing
    log times: ``size`` characters per chunk (None: whole texts), or random 1..6 when ``rng`` is given."""
    chunker = Chunker("chars", 6, rng=rng) if rng is not None else Chunker("chars", size or sys.maxsize)
    deltas = frontend_deltas(Conversation(conversation_id, tenant, tuple(messages)), chunker, end=False)
    return [msgspec.structs.replace(d, ts_ms=1000 + i) for i, d in enumerate(deltas)]


@dataclass
class Run:
    state: ConversationState
    verdicts: list[Verdict] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    rounds: int = 0


def drive(
    scorer: Scorer, engine: HashEngine, deltas: Sequence[TokenDelta], *, absorb_every: int = 1,
    roundtrip: Scorer | None = None, state: ConversationState | None = None, now_ms: int = 5000,
) -> Run:
    """Apply deltas; every ``absorb_every`` deltas (and at the end) run the engine until nothing is pending.

    ``roundtrip``: encode the state after every step and decode it with that (fresh) scorer, as a crash
    and restart would.
    """
    first = deltas[0]
    run = Run(state or scorer.new_state(first.conversation_id, first.tenant))

    def settle() -> None:
        while (request := scorer.pending(run.state)) is not None:
            run.rounds += 1
            absorbed = scorer.absorb(run.state, engine.run([request])[0], now_ms)
            run.verdicts.extend(absorbed.verdicts)
            run.rejections += absorbed.rejections
            if roundtrip is not None:
                run.state = roundtrip.decode_state(scorer.encode_state(run.state))

    for offset, delta in enumerate(deltas):
        run.rejections += scorer.apply(run.state, delta, encode(delta), SourceRef("guard.in", 0, offset), now_ms)
        if roundtrip is not None:
            run.state = roundtrip.decode_state(scorer.encode_state(run.state))
        if (offset + 1) % absorb_every == 0:
            settle()
    settle()
    return run


def content(verdict: Verdict, *, drop: Sequence[str] = ()) -> dict[str, Any]:
    """A verdict without its clock fields (and any ``drop``ped ones): what must be reproducible."""
    skip = {"ts_ms", "latency_ms", *drop}
    return {k: getattr(verdict, k) for k in verdict.__struct_fields__ if k not in skip}


def reference_decisions(
    text: TextTokenizer, engine: HashEngine, messages: Sequence[Message], labels: LabelMaps,
) -> dict[int, tuple[Any, ...]]:
    """The decision per message from one full-sequence pass over ``render_context`` (the reference)."""
    out: dict[int, tuple[Any, ...]] = {}
    for index, message in enumerate(messages):
        if message.role == "system":
            continue
        rendered = render_context(text, messages, index)
        outputs = engine.outputs_for(rendered.token_ids, 0)
        rows = rendered.scored_positions
        if message.role == "user":
            decision = decide_prompt(outputs.query_risk_logits[rows], outputs.query_category_logits[rows], labels)
        else:
            decision = decide_response(outputs.risk_logits[rows], outputs.category_logits[rows], labels)
        out[index] = (decision.risk, decision.category, decision.token_index, decision.scores or None)
    return out
