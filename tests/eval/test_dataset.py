"""Reading labelled sets, and the index convention of the loc fields (docs/eval.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from pipeline.errors import UserError
from pipeline.eval.dataset import locate_sentence, read_samples, split_inline_thinking
from pipeline.tokens.chat import render_context
from pipeline.tokens.text import TextTokenizer

DATA = Path(__file__).resolve().parents[2] / "pipeline" / "eval" / "data"


def test_the_shipped_sets_read_in_both_layouts() -> None:
    classify = read_samples(DATA / "classify.jsonl", "classify")
    loc = read_samples(DATA / "loc.jsonl", "loc")
    conversations = read_samples(DATA / "conversations.jsonl")
    assert len(classify) + len(loc) + len(conversations) >= 30
    assert {s.label for s in classify} == {"safe", "unsafe", "controversial"}
    assert {s.role for s in classify} == {"user", "assistant"}
    assert all(s.timed and s.label == "unsafe" for s in loc)
    assert any(s.timed for s in conversations) and any(not s.timed for s in conversations)
    thinking = [s for s in classify + loc if s.conversation.messages[-1].reasoning]
    assert thinking, "the inline <think> samples must come out with reasoning"


def test_shipped_loc_indices_mark_exactly_their_unsafe_sentence(qwen_tokenizer: Tokenizer) -> None:
    text = TextTokenizer.of(qwen_tokenizer)
    for name in ("loc.jsonl", "conversations.jsonl"):
        raw_lines = [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]
        samples = read_samples(DATA / name)
        for raw, sample in zip(raw_lines, samples, strict=True):
            if not sample.timed:
                continue
            located = locate_sentence(text, sample.conversation.messages, raw["unsafe_sentence"])
            assert located == (sample.unsafe_start, sample.unsafe_end), sample.sample_id


def test_index_convention_counts_every_token_of_the_rendered_conversation(qwen_tokenizer: Tokenizer) -> None:
    """Position 0 is the first <|im_start|>; template pieces (headers, the empty think block) count."""
    text = TextTokenizer.of(qwen_tokenizer)
    sample = read_samples(DATA / "loc.jsonl")[0]
    messages = sample.conversation.messages
    context = render_context(text, messages, sample.judged_index)
    assert context.token_ids[0] == text.token_id("<|im_start|>")
    first_content = context.scored_positions[0]
    # user header (3) + user text + <|im_end|>\n (2) + assistant header (3) + <think>\n\n</think>\n\n (4)
    user_tokens = len(text.encode_text(messages[0].content))
    assert first_content == 3 + user_tokens + 2 + 3 + 4
    assert sample.unsafe_start is not None and sample.unsafe_end is not None
    marked = text.decode(context.token_ids[sample.unsafe_start: sample.unsafe_end + 1])
    assert marked.strip() == "you could slash their car tyres at night so they learn a lesson."
    # For plain English text the whole-string tokenization (the report's script) gives the same ids.
    whole = text.template.encode(text.decode(context.token_ids), add_special_tokens=False).ids
    assert list(whole) == context.token_ids


def test_inline_thinking_is_split_as_the_template_splits_it() -> None:
    assert split_inline_thinking("<think>\nplan\n\n</think>\n\nanswer") == ("plan", "answer")
    assert split_inline_thinking("no thinking here") == (None, "no thinking here")
    assert split_inline_thinking("a</think>b</think>\nc") == ("a", "c")


@pytest.mark.parametrize(("line", "problem"), [
    ('{"message": [{"role": "user", "content": "hi"}]}', "no 'label'"),
    ('{"message": [{"role": "user", "content": "hi"}], "label": "maybe"}', "must be Safe, Unsafe or Controversial"),
    ('{"label": "Safe"}', "no 'message'"),
    ('{"message": [], "label": "Safe"}', "non-empty list"),
    ('{"message": [{"role": "user", "content": "hi"}], "label": "Unsafe", "unsafe_start_index": 3}', "or neither"),
    ('{"message": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "label": "Unsafe", '
     '"unsafe_start_index": 9, "unsafe_end_index": 3}', "is after"),
    ('{"message": [{"role": "user", "content": "hi"}], "label": "Unsafe", "unsafe_start_index": 1, '
     '"unsafe_end_index": 3}', "assistant message last"),
    ('{"message": [{"role": "user", "content": "hi"}], "label": "Unsafe", "unsafe_start_index": -1, '
     '"unsafe_end_index": 3}', "integer >= 0"),
    ('{"message": [{"role": "system", "content": "hi"}], "label": "Safe"}', "system message is never judged"),
    ('not json', "not valid JSON"),
])
def test_bad_lines_say_what_is_wrong_and_where(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=f"bad.jsonl:1: .*{problem}"):
        read_samples(path)


def test_loc_split_requires_indices_and_classify_ignores_them(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"message": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], '
                    '"label": "Safe"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="--split loc needs"):
        read_samples(path, "loc")
    assert not read_samples(DATA / "loc.jsonl", "classify")[0].timed
