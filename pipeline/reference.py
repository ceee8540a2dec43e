"""Offline reference moderation: one full-sequence torch forward per message, no cache, no streaming.

This is the computation the streaming pipeline must reproduce (pipeline spec §3): for message i the
context is ``messages[:i+1]`` rendered by :func:`pipeline.tokens.chat.render_context`, the model runs
once over the whole context, and the decision rule reads the logits at the message's scored
positions (user: the query heads at its ``<|im_end|>``; assistant: the response heads at its
reasoning/content tokens; system: nothing). It is deliberately simple and independent of the
incremental code so that comparing the two means something.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.conversations import Conversation, Message
from pipeline.decision import Decision, decide_prompt, decide_response
from pipeline.engine.types import FeedRequest, HeadOutputs
from pipeline.labels import LabelMaps
from pipeline.model.modeling import Qwen3GuardStream
from pipeline.tokens.chat import RenderedContext, render_context
from pipeline.tokens.text import TextTokenizer

JUDGED_ROLES = ("user", "assistant")


def _rows(outputs: HeadOutputs, rows: Sequence[int]) -> HeadOutputs:
    index = np.asarray(rows, dtype=np.int64)
    return HeadOutputs(
        risk_logits=outputs.risk_logits[index],
        category_logits=outputs.category_logits[index],
        query_risk_logits=outputs.query_risk_logits[index],
        query_category_logits=outputs.query_category_logits[index],
    )


@torch.no_grad()
def reference_logits(model: Qwen3GuardStream, token_ids: Sequence[int]) -> HeadOutputs:
    """Float32 logits of all four heads at every position of ``token_ids``, from one full forward."""
    device = next(model.parameters()).device
    if not token_ids:
        empty = np.zeros((0,), dtype=np.float32)
        return HeadOutputs(*(empty.reshape(0, n) for n in _head_widths(model)))
    out = model(torch.tensor([list(token_ids)], dtype=torch.long, device=device))

    def numpy(t: torch.Tensor) -> np.ndarray:
        return t[0].float().cpu().numpy()

    return HeadOutputs(
        risk_logits=numpy(out.risk_level_logits),
        category_logits=numpy(out.category_logits),
        query_risk_logits=numpy(out.query_risk_level_logits),
        query_category_logits=numpy(out.query_category_logits),
    )


def _head_widths(model: Qwen3GuardStream) -> tuple[int, int, int, int]:
    return (model.risk_level_head.out_features, model.category_head.out_features,
            model.query_risk_level_head.out_features, model.query_category_head.out_features)


@dataclass(frozen=True)
class MessageJudgement:
    """The reference's view of one user/assistant message."""

    message_index: int
    role: str
    context: RenderedContext     # token ids of messages[:i+1] and the scored positions of message i
    scored: HeadOutputs          # logits at the scored positions only, in order
    decision: Decision


def decide(role: str, scored: HeadOutputs, labels: LabelMaps) -> Decision:
    """The decision rule for a message's scored logits (prompt argmax or response debounce)."""
    if role == "user":
        return decide_prompt(scored.query_risk_logits, scored.query_category_logits, labels)
    return decide_response(scored.risk_logits, scored.category_logits, labels)


def judge_message(model: Qwen3GuardStream, text: TextTokenizer, messages: Sequence[Message], index: int,
                  labels: LabelMaps) -> MessageJudgement:
    """Render message ``index`` in its context, run the model once, decide."""
    context = render_context(text, messages, index)
    scored = _rows(reference_logits(model, context.token_ids), context.scored_positions)
    role = messages[index].role
    return MessageJudgement(index, role, context, scored, decide(role, scored, labels))


def judge_conversation(model: Qwen3GuardStream, text: TextTokenizer, conversation: Conversation,
                       labels: LabelMaps) -> list[MessageJudgement]:
    """Judgements of every user and assistant message, in order (system messages are context only)."""
    messages = conversation.messages
    return [judge_message(model, text, messages, i, labels)
            for i, m in enumerate(messages) if m.role in JUDGED_ROLES]


class ReferenceEngine:
    """A StreamEngine that recomputes every request from scratch with a full forward.

    Slow (the official approach's cost) but cache-free: a yardstick for the incremental engine,
    and an engine the scoring code can run on without ONNX.
    """

    def __init__(self, model: Qwen3GuardStream, model_name: str) -> None:
        self.model = model
        self.model_name = model_name

    def run(self, requests: Sequence[FeedRequest]) -> list[HeadOutputs]:
        results = []
        for request in requests:
            wanted = range(request.start, len(request.token_ids))
            results.append(_rows(reference_logits(self.model, request.token_ids), list(wanted)))
        return results

    def evict(self, key: str) -> None:
        """Nothing is cached."""
