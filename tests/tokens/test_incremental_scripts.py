"""Any chunking of text in any script gives the whole text's tokens; over-long runs are cut, never lost."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.tokens.incremental import IncrementalState, IncrementalTokenizer
from pipeline.tokens.text import TextTokenizer
from tests.tokens.scripts import CLASSES, class_texts, long_run, splits

CUTS = st.lists(st.integers(min_value=0, max_value=400), max_size=40)


def stream(incremental: IncrementalTokenizer, parts: list[str]) -> tuple[list[int], list[tuple[int, int]], int]:
    """(ids, spans, most characters held after any delta) for ``parts`` fed one after another."""
    state = IncrementalState()
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    held = 0
    for part in parts:
        out = incremental.feed(state, part)
        ids += out.ids
        spans += out.spans
        held = max(held, len(state.pending))
    out = incremental.finish(state)
    return ids + out.ids, spans + out.spans, held


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_any_chunking_of_each_script_gives_the_whole_text_tokens(text_tokenizer: TextTokenizer, name: str) -> None:
    incremental = IncrementalTokenizer(text_tokenizer)

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(text=class_texts(name, max_size=60), cuts=CUTS)
    def check(text: str, cuts: list[int]) -> None:
        whole = text_tokenizer.encode_text_spans(text)
        ids, spans, _ = stream(incremental, splits(text, cuts))
        assert ids == whole.ids
        assert spans == whole.spans

    check()


@pytest.mark.parametrize("name", ["digits", "whitespace", "cjk", "emoji", "marks", "unassigned", "mixed"])
def test_one_character_deltas_give_the_whole_text_tokens(text_tokenizer: TextTokenizer, name: str) -> None:
    incremental = IncrementalTokenizer(text_tokenizer)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(text=class_texts(name, max_size=40))
    def check(text: str) -> None:
        ids, _, _ = stream(incremental, list(text))
        assert ids == text_tokenizer.encode_text(text)

    check()


def test_digits_stream_out_exactly_one_token_per_digit_as_they_arrive(text_tokenizer: TextTokenizer) -> None:
    incremental = IncrementalTokenizer(text_tokenizer)
    text = "pi = " + long_run("digits", 3000)
    state = IncrementalState()
    ids: list[int] = []
    for index, char in enumerate(text):
        ids += incremental.feed(state, char).ids
        if index > 10:
            assert state.pending == "", "a digit was held back"
    ids += incremental.finish(state).ids
    assert ids == text_tokenizer.encode_text(text)


@pytest.mark.parametrize(
    "name", ["whitespace", "newlines", "punctuation", "cjk", "emoji", "marks", "unassigned", "letters_and_unassigned"],
)
@pytest.mark.parametrize("step", [1, 7, 64])
def test_a_run_longer_than_the_cap_is_cut_and_nothing_is_lost(
    text_tokenizer: TextTokenizer, name: str, step: int,
) -> None:
    cap = 128
    incremental = IncrementalTokenizer(text_tokenizer, max_held_chars=cap)
    text = "x " + long_run(name, 1500) + " end."
    parts = [text[i:i + step] for i in range(0, len(text), step)]
    ids, spans, held = stream(incremental, parts)
    assert held <= cap + step
    # The cuts only regroup characters: spans cover the text in order and the tokens spell it (each part
    # of a forced cut normalized on its own, which runs of marks may reorder: compare as sorted text).
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(spans))
    decoded = text_tokenizer.decode(ids)
    assert sorted(decoded) == sorted(text) if name == "marks" else decoded == text


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=class_texts("mixed", max_size=25), cuts=CUTS)
def test_a_small_cap_changes_nothing_when_no_run_reaches_it(
    text_tokenizer: TextTokenizer, text: str, cuts: list[int],
) -> None:
    parts = splits(text, cuts)
    _, _, held = stream(IncrementalTokenizer(text_tokenizer), parts)
    if held > 64:
        return   # the small cap would force a cut: covered by the test above
    ids, _, _ = stream(IncrementalTokenizer(text_tokenizer, max_held_chars=64), parts)
    assert ids == text_tokenizer.encode_text(text)


def test_a_cap_too_small_for_added_tokens_is_refused(text_tokenizer: TextTokenizer) -> None:
    with pytest.raises(ValueError, match="at least 64"):
        IncrementalTokenizer(text_tokenizer, max_held_chars=16)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=class_texts("mixed", max_size=40), keep=st.lists(st.booleans(), min_size=80, max_size=80))
def test_deltas_cut_at_token_boundaries_as_a_model_streams_them_give_the_whole_text_tokens(
    text_tokenizer: TextTokenizer, text: str, keep: list[bool],
) -> None:
    whole = text_tokenizer.encode_text_spans(text)
    # A model streams whole tokens, one or a few per delta: cut at a random subset of token starts.
    starts = sorted({a for a, _ in whole.spans if a > 0})
    bounds = [0, *(s for s, k in zip(starts, keep, strict=False) if k), len(text)]
    parts = [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    ids, spans, _ = stream(IncrementalTokenizer(text_tokenizer), parts)
    assert ids == whole.ids
    assert spans == whole.spans
