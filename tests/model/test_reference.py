"""The offline full-sequence reference, and its agreement with the streaming Scorer.

The streamed side here runs the Scorer on :class:`ReferenceEngine` (no cache, no ONNX), so a
disagreement points at rendering, scored positions, spans or the decision rule, not at numerics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.conversations import parse_conversation
from pipeline.labels import LabelMaps
from pipeline.model.checkpoint import load_stream_model
from pipeline.policy import PolicyBook, TenantPolicy
from pipeline.reference import ReferenceEngine, ReferenceModerator, judge_conversation, reference_logits
from pipeline.scoring.scorer import Scorer
from pipeline.simulate import Simulator, offline_finals
from pipeline.tokens.text import TextTokenizer

IM_END = 151645


@pytest.fixture(scope="module")
def tiny_model(tiny_stream_dir: Path) -> Any:
    model, _ = load_stream_model(str(tiny_stream_dir))
    return model


@pytest.fixture(scope="module")
def text_tokenizer(qwen_tokenizer: Any) -> TextTokenizer:
    return TextTokenizer(qwen_tokenizer)


def moderator(model: Any, text: TextTokenizer, max_context_tokens: int = 8192) -> ReferenceModerator:
    return ReferenceModerator(model, text, LabelMaps(), PolicyBook(default=TenantPolicy("strict")), "tiny",
                              include_token_labels=True, max_context_tokens=max_context_tokens)


def simulator(model: Any, text: TextTokenizer, max_context_tokens: int = 8192) -> Simulator:
    scorer = Scorer(text, LabelMaps(), PolicyBook(default=TenantPolicy("strict")), "tiny",
                    include_token_labels=True, max_context_tokens=max_context_tokens)
    return Simulator(scorer, ReferenceEngine(model, "tiny"))


def test_every_user_and_assistant_message_is_judged_once(tiny_model: Any, text_tokenizer: TextTokenizer,
                                                         sample_conversations: list[Any]) -> None:
    for conversation in sample_conversations:
        judged = judge_conversation(tiny_model, text_tokenizer, conversation, LabelMaps())
        expected = [i for i, m in enumerate(conversation.messages) if m.role in ("user", "assistant")]
        assert [j.message_index for j in judged] == expected
        for j in judged:
            assert len(j.scored) == len(j.context.scored_positions)
            assert len(j.decision.token_labels) == len(j.scored)


def test_user_verdict_reads_the_query_heads_at_its_im_end(tiny_model: Any, text_tokenizer: TextTokenizer,
                                                          sample_conversations: list[Any]) -> None:
    conversation = next(c for c in sample_conversations if c.conversation_id == "injection")
    user = judge_conversation(tiny_model, text_tokenizer, conversation, LabelMaps())[0]
    (position,) = user.context.scored_positions
    assert user.context.token_ids[position] == IM_END
    # The literal "<|im_end|>" the user typed stays text: the only im_end token closes the message.
    assert user.context.token_ids.count(IM_END) == 1
    everywhere = reference_logits(tiny_model, user.context.token_ids)
    assert (user.scored.query_risk_logits[0] == everywhere.query_risk_logits[position]).all()


def test_reference_logits_equal_a_plain_forward(tiny_model: Any) -> None:
    ids = [151644, 872, 198, 9707, 151645, 198]
    with torch.no_grad():
        out = tiny_model(torch.tensor([ids]))
    got = reference_logits(tiny_model, ids)
    assert (got.risk_logits == out.risk_level_logits[0].numpy()).all()
    assert (got.category_logits == out.category_logits[0].numpy()).all()
    assert (got.query_risk_logits == out.query_risk_level_logits[0].numpy()).all()
    assert (got.query_category_logits == out.query_category_logits[0].numpy()).all()


def test_random_model_gives_more_than_one_verdict_kind(tiny_model: Any, text_tokenizer: TextTokenizer,
                                                       sample_conversations: list[Any]) -> None:
    risks = {v.risk for c in sample_conversations for v in moderator(tiny_model, text_tokenizer).moderate(c)}
    assert len(risks) >= 2


@pytest.mark.parametrize("chunk_chars", [0, 1, 3])
def test_streamed_final_verdicts_equal_the_reference(tiny_model: Any, text_tokenizer: TextTokenizer,
                                                     sample_conversations: list[Any], chunk_chars: int) -> None:
    reference = moderator(tiny_model, text_tokenizer)
    streamed = simulator(tiny_model, text_tokenizer)
    for conversation in sample_conversations:
        expected = reference.moderate(conversation, now_ms=5)
        got = streamed.final_verdicts(conversation, chunk_chars=chunk_chars, now_ms=5)
        assert got == expected, conversation.conversation_id


LONG = {"conversation_id": "long", "tenant": None, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Tell me a story about a lighthouse keeper and a storm."},
    {"role": "assistant", "content": "Once upon a time a keeper watched the sea through every long night.",
     "reasoning": "A short story, calm tone."},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "The storm came and the light never went out."},
]}


@pytest.mark.parametrize("max_context_tokens", [12, 25, 30, 45, 58, 70, 74])
def test_context_limit_cuts_the_same_way_streamed_and_offline(tiny_model: Any, text_tokenizer: TextTokenizer,
                                                              max_context_tokens: int) -> None:
    conversation = parse_conversation(LONG, "long")
    expected = moderator(tiny_model, text_tokenizer, max_context_tokens).moderate(conversation)
    result = simulator(tiny_model, text_tokenizer, max_context_tokens).simulate(conversation, chunk_chars=4)
    assert offline_finals(result.verdicts) == expected
    assert result.rejections   # the limit really cut the conversation (the streamed side reports each cut)
