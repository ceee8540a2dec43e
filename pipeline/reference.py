"""Offline reference moderation: one full-sequence torch forward per message, no cache, no streaming.

This is the computation the streaming pipeline must reproduce (docs/token-stream.md): for message i the
context is ``messages[:i+1]`` rendered by :func:`pipeline.tokens.chat.render_context`, the model runs
once over the whole context, and the decision rule reads the logits at the message's scored
positions (user: the query heads at its ``<|im_end|>``; assistant: the response heads at its
reasoning/content tokens; system: nothing). It is deliberately simple and independent of the
incremental code so that comparing the two means something.

Verdicts carry what describes the message, not a delivery: ``char_offset`` of the deciding token in
the message text (reasoning then content, as the stream scorer counts it), no ``seq`` and no
``cleared_through_seq`` (an offline message has no chunks).

Context limit (``max_context_tokens``), the stream scorer's policy (pipeline.scoring.render): a
message whose context does not fit has its text cut (template pieces are kept, so a user message is
still judged at its ``<|im_end|>``) and stays cut in later contexts; a message whose template alone
does not fit is not judged (no verdict), nor is any later message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from pipeline.conversations import Conversation, Message
from pipeline.decision import OFFICIAL_RULE, Decision, decide_prompt, decide_response
from pipeline.engine.types import NO_CACHE, FeedRequest, HeadOutputs
from pipeline.labels import LabelMaps
from pipeline.model.modeling import Qwen3GuardStream
from pipeline.policy import PolicyBook
from pipeline.scoring.verdicts import final_verdict
from pipeline.tokens.chat import (
    RenderedContext,
    assemble_message,
    message_ids,
    render_context,
    renders_think_block,
)
from pipeline.tokens.text import TextTokenizer
from schemas.messages import Verdict

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


def scored_char_spans(text: TextTokenizer, messages: Sequence[Message], index: int) -> list[tuple[int, int]]:
    """Character span, in the message text, of each scored token of message ``index`` (last in context).

    Message text = reasoning then content, as the stream scorer concatenates a message's deltas.
    Newlines the template strips (around reasoning, before content after a think block) count in
    the offsets but belong to no token. A user message's one scored token, ``<|im_end|>``, sits at
    the end of its text.
    """
    message = messages[index]
    if message.role == "user":
        return [(len(message.content), len(message.content))]
    if message.role != "assistant":
        return []
    roles = [m.role for m in messages[: index + 1]]
    if not renders_think_block(roles, index, bool(message.reasoning)):
        return text.encode_text_spans(message.content).spans
    reasoning = message.reasoning or ""
    lead = len(reasoning) - len(reasoning.lstrip("\n"))
    spans = [(lead + a, lead + b) for a, b in text.encode_text_spans(reasoning.strip("\n")).spans]
    content = message.content.lstrip("\n")
    base = len(reasoning) + len(message.content) - len(content)
    return spans + [(base + a, base + b) for a, b in text.encode_text_spans(content).spans]


@dataclass(frozen=True)
class CutMessage:
    """What remains of a message the context limit cut short (the stream scorer keeps exactly this)."""

    content: list[int]       # content tokens that fit
    reasoning: list[int]     # reasoning tokens that fit
    dropped_newlines: int    # leading content newlines the think block stripped before content was cut


def _history_ids(text: TextTokenizer, roles: Sequence[str], messages: Sequence[Message], index: int,
                 cuts: Mapping[int, CutMessage]) -> list[int]:
    """Message ``index`` as earlier history in the context ``roles``; a cut message keeps its cut tokens."""
    message = messages[index]
    cut = cuts.get(index)
    if cut is None:
        return message_ids(text, roles, message, index).ids
    think = message.role == "assistant" and renders_think_block(roles, index, bool(message.reasoning))
    content = cut.content
    if not think and cut.dropped_newlines:
        # The think block left with the re-render and the stripped newlines come back: the scorer
        # re-tokenizes them with the kept text, so the reference does too.
        content = text.encode_text("\n" * cut.dropped_newlines + text.decode(content))
    return assemble_message(text, message.role, content, think=think, reasoning_ids=cut.reasoning if think else []).ids


def fit_context(text: TextTokenizer, messages: Sequence[Message], index: int, max_context_tokens: int,
                cuts: Mapping[int, CutMessage] | None = None) -> tuple[RenderedContext, CutMessage | None] | None:
    """Message ``index``'s context within ``max_context_tokens`` tokens, earlier cut messages as cut.

    Returns the context and, when message ``index`` itself had to be cut, what remains of it; None
    when not even its template fits (then neither it nor any later message is judged). Cutting
    keeps the template pieces: a cut user message is still judged at its ``<|im_end|>``.
    """
    roles = [m.role for m in messages[: index + 1]]
    prefix = [t for j in range(index) for t in _history_ids(text, roles, messages, j, cuts or {})]
    message = messages[index]
    rendered = message_ids(text, roles, message, index)
    if len(prefix) + len(rendered.ids) <= max_context_tokens:
        return RenderedContext(prefix + rendered.ids, [len(prefix) + o for o in rendered.scored]), None
    think = message.role == "assistant" and renders_think_block(roles, index, bool(message.reasoning))
    stripped = message.content.lstrip("\n") if think else message.content
    content = text.encode_text(stripped)
    reasoning = text.encode_text((message.reasoning or "").strip("\n")) if think else []
    template = assemble_message(text, message.role, [], think=think)   # header, empty think, end
    if len(prefix) + len(template.ids) > max_context_tokens:
        return None
    content_reached = True
    if reasoning:
        with_reasoning = assemble_message(text, message.role, [], think=True, reasoning_ids=reasoning[:1])
        room = max_context_tokens - len(prefix) - (len(with_reasoning.ids) - 1)
        if room < 1:
            reasoning, content, content_reached = [], [], False   # an empty think block, nothing judged
        elif room < len(reasoning):
            reasoning, content, content_reached = reasoning[:room], [], False
        else:
            content = content[: room - len(reasoning)]
    else:
        content = content[: max_context_tokens - len(prefix) - len(template.ids)]
    cut = assemble_message(text, message.role, content, think=think, reasoning_ids=reasoning)
    dropped = len(message.content) - len(stripped) if content_reached else 0
    context = RenderedContext(prefix + cut.ids, [len(prefix) + offset for offset in cut.scored])
    return context, CutMessage(list(content), list(reasoning), dropped)


def judge_context(model: Qwen3GuardStream, context: RenderedContext, message: Message, index: int,
                  labels: LabelMaps) -> MessageJudgement:
    """Run the model once over ``context`` and decide message ``index`` from its scored positions."""
    scored = _rows(reference_logits(model, context.token_ids), context.scored_positions)
    return MessageJudgement(index, message.role, context, scored, decide(message.role, scored, labels))


def judge_conversation(model: Qwen3GuardStream, text: TextTokenizer, conversation: Conversation,
                       labels: LabelMaps, max_context_tokens: int | None = None) -> list[MessageJudgement]:
    """Judgements of the user and assistant messages, in order (system messages are context only).

    With ``max_context_tokens``: messages are cut to fit as the stream scorer cuts them, and judging
    stops at the first message whose template does not fit.
    """
    messages = conversation.messages
    judged: list[MessageJudgement] = []
    cuts: dict[int, CutMessage] = {}
    for i, message in enumerate(messages):
        if max_context_tokens is None:
            context = render_context(text, messages, i)
        else:
            fitted = fit_context(text, messages, i, max_context_tokens, cuts)
            if fitted is None:
                break
            context, cut = fitted
            if cut is not None:
                cuts[i] = cut
        if message.role in JUDGED_ROLES:
            judged.append(judge_context(model, context, message, i, labels))
    return judged


class ReferenceModerator:
    """Final Verdicts for complete conversations from the full-sequence reference computation."""

    def __init__(self, model: Qwen3GuardStream, tokenizer: Tokenizer | TextTokenizer, labels: LabelMaps,
                 policies: PolicyBook, model_name: str, *, include_token_labels: bool = False,
                 max_context_tokens: int = 8192) -> None:
        self.model = model
        self.text = TextTokenizer.of(tokenizer)
        self.labels = labels
        self.policies = policies
        self.model_name = model_name
        self.include_token_labels = include_token_labels
        self.max_context_tokens = max_context_tokens

    @classmethod
    def from_dir(cls, folder: Path, policies: PolicyBook, model_name: str, *, device: str = "auto",
                 precision: str = "auto", include_token_labels: bool = False,
                 max_context_tokens: int = 8192) -> ReferenceModerator:
        """Load the checkpoint and its tokenizer from ``folder`` (fp32 on CPU unless told otherwise)."""
        from pipeline.model.checkpoint import load_stream_model
        from pipeline.tokens.files import load_model_tokenizer

        model, config = load_stream_model(str(folder), dtype=precision, device=device)
        tokenizer = load_model_tokenizer(folder)
        return cls(model, tokenizer, LabelMaps.from_config(config), policies, model_name,
                   include_token_labels=include_token_labels, max_context_tokens=max_context_tokens)

    def judge(self, conversation: Conversation) -> list[MessageJudgement]:
        return judge_conversation(self.model, self.text, conversation, self.labels, self.max_context_tokens)

    def moderate(self, conversation: Conversation, now_ms: int = 0) -> list[Verdict]:
        """One final Verdict per judged user/assistant message, stamped ``now_ms``."""
        policy = self.policies.for_tenant(conversation.tenant)
        verdicts = []
        for judgement in self.judge(conversation):
            decision = judgement.decision
            if judgement.role == "assistant" and policy.rule != OFFICIAL_RULE:
                decision = decide_response(judgement.scored.risk_logits, judgement.scored.category_logits,
                                           self.labels, policy.rule)
            char_offset = None
            if decision.token_index is not None:
                spans = scored_char_spans(self.text, conversation.messages, judgement.message_index)
                char_offset = spans[decision.token_index][0]
            verdicts.append(final_verdict(
                conversation_id=conversation.conversation_id, message_index=judgement.message_index,
                role=judgement.role,  # type: ignore[arg-type]
                decision=decision, policy=policy, model=self.model_name, ts_ms=now_ms,
                tenant=conversation.tenant, char_offset=char_offset,
                include_token_labels=self.include_token_labels,
            ))
        return verdicts


class ReferenceEngine:
    """A StreamEngine that recomputes every request from scratch with a full forward.

    Slow (the official approach's cost) but cache-free: a yardstick for the incremental engine,
    and an engine the scoring code can run on without ONNX.
    """

    cache = NO_CACHE

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
