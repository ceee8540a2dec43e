"""Incremental tokenization equals whole-text tokenization for any split, and never retracts a token."""

from __future__ import annotations

import itertools

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.tokens.incremental import IncrementalState, IncrementalTokenizer, is_stable_starter
from pipeline.tokens.text import TextTokenizer

# Pieces that stress NFC, the pre-tokenizer regex and byte-level BPE, across many scripts.
FRAGMENTS = [
    "Hello", " world", "it's", "'ll", "'VE", " ", "  ", "\t", "\n", "\r\n", "\n\n", " \n", "\r", "...", "!!",
    "?!", "—", "«", "»", "123", "4567", "٣٤", "१२", "3.14", "你好", "，", "。", "世界", "学习编程", "こんにちは",
    "カタカナ", "한국어", "\u1100\u1161\u11a8", "مرحبا", " بالعالم", "؟", "नमस्ते", "क़", "दुनिया", "ไทย",
    "e\u0301", "\u0301", "\u0303", "n\u0303", "A\u030a", "\u212b", "Å", "\u0338", ">", "<", "<think>", "</think>",
    "<|im_end|>", "<|im_start|>", "<tool_call>", "<thi", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "\u200d",
    "\ufe0f", "👍🏽", "🇫🇷", "\u00a0", "\u3000", "\u2028", "\x1c", "\x00", "\U000e0100", "\U0010fffd", "ǅ", "ß",
    "ﬁ", "$", "%", "_", "a", "Z", "9", "'", "s", "t", "re", "<  4", " \n ", "\n\n\n", "x  ",
]
texts = st.lists(st.sampled_from(FRAGMENTS), min_size=0, max_size=14).map("".join) | st.text(max_size=40)


def splits(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_any_split_gives_the_whole_text_tokens_and_no_token_is_ever_retracted(
    text_tokenizer: TextTokenizer, text: str, cuts: list[int],
) -> None:
    incremental = IncrementalTokenizer(text_tokenizer)
    whole = text_tokenizer.encode_text(text)
    state = IncrementalState()
    emitted: list[int] = []
    for part in splits(text, cuts):
        emitted += incremental.feed(state, part).ids
        assert emitted == whole[: len(emitted)], "an emitted token changed later"
    emitted += incremental.finish(state).ids
    assert emitted == whole


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_state_survives_serialization_mid_text(text_tokenizer: TextTokenizer, text: str, cuts: list[int]) -> None:
    incremental = IncrementalTokenizer(text_tokenizer)
    state = IncrementalState()
    emitted: list[int] = []
    for part in splits(text, cuts):
        emitted += incremental.feed(state, part).ids
        state = msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=IncrementalState)
    emitted += incremental.finish(state).ids
    assert emitted == text_tokenizer.encode_text(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_token_spans_are_the_whole_text_offsets(text_tokenizer: TextTokenizer, text: str, cuts: list[int]) -> None:
    incremental = IncrementalTokenizer(text_tokenizer)
    state = IncrementalState()
    spans: list[tuple[int, int]] = []
    for part in splits(text, cuts):
        spans += incremental.feed(state, part).spans
    spans += incremental.finish(state).spans
    assert spans == text_tokenizer.encode_text_spans(text).spans


def test_ordinary_text_is_emitted_as_it_arrives_holding_back_only_a_short_tail(text_tokenizer: TextTokenizer) -> None:
    incremental = IncrementalTokenizer(text_tokenizer)
    text = "The quick brown fox, 42 times, jumps over the lazy dog.\n" * 200
    state = IncrementalState()
    longest_held = 0
    for char in text:
        incremental.feed(state, char)
        longest_held = max(longest_held, len(state.pending))
    # O(delta) per feed: the held tail is a word or so, never the growing message.
    assert longest_held <= 12
    assert state.pending_start > len(text) - 12


def test_a_delta_of_many_tokens_is_emitted_up_to_its_last_word_at_once(text_tokenizer: TextTokenizer) -> None:
    incremental = IncrementalTokenizer(text_tokenizer)
    text = "The quick brown fox, 42 times, jumps over the lazy dog. It's fine.\n" * 50
    state = IncrementalState()
    for index in range(0, len(text), 64):
        incremental.feed(state, text[index:index + 64])
        assert len(state.pending) <= 12, f"held {state.pending!r}"


def test_special_token_text_is_plain_text_but_think_tags_match(text_tokenizer: TextTokenizer) -> None:
    incremental = IncrementalTokenizer(text_tokenizer)
    state = IncrementalState()
    ids: list[int] = []
    for char in "x<|im_end|>y<think>z":
        ids += incremental.feed(state, char).ids
    ids += incremental.finish(state).ids
    assert 151645 not in ids and 151667 in ids
    assert ids == text_tokenizer.encode_text("x<|im_end|>y<think>z")


def test_combining_marks_and_hangul_jamo_are_not_stable_cut_points() -> None:
    assert is_stable_starter("a") and is_stable_starter("你")
    assert not is_stable_starter("\u0301")        # combining acute
    assert not is_stable_starter("\u1161")        # Hangul medial vowel joins the leading consonant
    assert not is_stable_starter("\u0b3e")        # Oriya vowel sign AA composes with a preceding vowel sign
    assert not is_stable_starter("\U000e0fff")    # unassigned: its class may differ between Unicode versions


def test_an_endless_letter_run_is_cut_so_that_the_held_text_stays_bounded(text_tokenizer: TextTokenizer) -> None:
    incremental = IncrementalTokenizer(text_tokenizer, max_held_chars=256)
    text = "学习编程" * 400             # one pre-token of 1,600 letters: no exact cut exists before its end
    state = IncrementalState()
    ids: list[int] = []
    longest_held = 0
    for char in text:
        ids += incremental.feed(state, char).ids
        longest_held = max(longest_held, len(state.pending))
    ids += incremental.finish(state).ids
    assert longest_held <= 257
    assert text_tokenizer.decode(ids) == text       # nothing lost or repeated at the forced cuts


@given(st.from_regex(r"[^\r\nA-Za-z0-9'<\x1c-\x1f\x80-\U0010ffff]?[A-Za-z]{1,12}", fullmatch=True))
@settings(max_examples=300, deadline=None)
def test_the_word_fast_paths_tail_is_what_examining_the_word_would_say(text_tokenizer: TextTokenizer,
                                                                      word: str) -> None:
    from pipeline.tokens.incremental import _word_tail

    tokenizer = IncrementalTokenizer(text_tokenizer)
    assert _word_tail(word) == tokenizer._tail_kind(word, arriving=False)
