"""Work per delta is bounded by the delta: characters handed to the Qwen3 tokenizer grow linearly with the text.

Counted, not timed: a tokenizer that counts the characters of every encode and pre-tokenize call.
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from pipeline.tokens.incremental import (
    SCAN_CREDIT_PER_CHAR,
    SCAN_CREDIT_PER_DELTA,
    IncrementalState,
    IncrementalTokenizer,
)
from pipeline.tokens.text import TextTokenizer, TokenSpans
from tests.tokens.scripts import long_run


class CountingTokenizer(TextTokenizer):
    """The real tokenizer, counting the characters passed to it."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__(tokenizer)
        self.chars = 0
        self.calls = 0
        self.encodes = 0

    def encode_text_spans(self, text: str) -> TokenSpans:
        self.chars += len(text)
        self.calls += 1
        self.encodes += 1
        return super().encode_text_spans(text)

    def pre_tokenize(self, normalized: str) -> list[tuple[str, tuple[int, int]]]:
        self.chars += len(normalized)
        self.calls += 1
        return super().pre_tokenize(normalized)


@pytest.fixture(scope="module")
def counting(qwen_tokenizer: Tokenizer) -> CountingTokenizer:
    return CountingTokenizer(qwen_tokenizer)


def stream_counting(counting: CountingTokenizer, text: str, step: int) -> tuple[int, int, int]:
    """(characters passed to the tokenizer, calls, most characters held) for ``text`` in ``step``-sized deltas."""
    incremental = IncrementalTokenizer(counting)
    counting.chars = counting.calls = counting.encodes = 0
    state = IncrementalState()
    held = 0
    for index in range(0, len(text), step):
        incremental.feed(state, text[index:index + step])
        held = max(held, len(state.pending))
    incremental.finish(state)
    return counting.chars, counting.calls, held


def test_a_long_number_one_digit_per_delta_costs_linear_work(counting: CountingTokenizer) -> None:
    text = "The answer is " + long_run("digits", 20_000) + "."
    chars, calls, held = stream_counting(counting, text, 1)
    # Quadratic work (the pending run pre-tokenized again per digit) would be ~2e8 characters.
    assert chars <= 4 * len(text)
    assert calls <= 3 * len(text)
    assert held <= 16


@pytest.mark.parametrize(
    "name",
    ["whitespace", "newlines", "punctuation", "cjk", "emoji", "marks", "unassigned", "letters_and_unassigned", "mixed"],
)
@pytest.mark.parametrize("step", [1, 64])
def test_every_input_class_costs_linear_work_and_holds_a_bounded_text(
    counting: CountingTokenizer, name: str, step: int,
) -> None:
    size = 20_000
    chars, _, held = stream_counting(counting, long_run(name, size), step)
    # A delta that extends the held run is not examined; an over-long run is cut at the cap, about three
    # passes over the cap per half cap. Quadratic work would be ~1e8 characters.
    assert chars <= 8 * size
    assert held <= 4096 + step


@pytest.mark.parametrize("step", [1, 2, 64])
def test_text_that_changes_class_every_character_without_a_cut_is_examined_within_the_scan_credit(
    counting: CountingTokenizer, step: int,
) -> None:
    size = 20_000
    chars, _, held = stream_counting(counting, long_run("decomposed_letters", size), step)
    deltas = -(-size // step)
    assert chars <= SCAN_CREDIT_PER_DELTA * deltas + SCAN_CREDIT_PER_CHAR * size + 8 * size
    assert held <= 4096 + step


def test_ordinary_text_is_examined_about_once_per_delta(counting: CountingTokenizer) -> None:
    text = long_run("mixed", 20_000)
    chars, _calls, held = stream_counting(counting, text, 1)
    assert held <= 16
    assert chars <= 12 * len(text)     # a held tail of a word or so, examined per delta


def test_one_huge_delta_pays_for_itself_and_the_text_after_it_streams_on(counting: CountingTokenizer) -> None:
    incremental = IncrementalTokenizer(counting)
    state = IncrementalState()
    incremental.feed(state, "word " * 200_000)
    assert len(state.pending) <= 4096
    held = []
    for char in " and then ordinary text, one character per delta." * 4:
        incremental.feed(state, char)
        held.append(len(state.pending))
    assert max(held[-50:]) <= 16, "the huge delta left the stream without scan credit"


def test_the_piece_cache_stays_small_whatever_the_pieces(text_tokenizer: TextTokenizer) -> None:
    from pipeline.tokens.incremental import PIECE_CACHE_MAX_CHARS, PIECE_CACHE_MAX_TOKENS, PIECE_CACHE_SIZE

    incremental = IncrementalTokenizer(text_tokenizer)
    state = IncrementalState()
    def word(number: int) -> str:   # distinct letter words: base 26
        letters = ""
        while True:
            number, digit = divmod(number, 26)
            letters += chr(ord("a") + digit)
            if not number:
                return letters

    # More distinct short pieces than the cache holds, and long ones it must not keep.
    words = [word(i) + ("q" * 300 if i % 50 == 0 else "") for i in range(PIECE_CACHE_SIZE + 2000)]
    for text in words:
        incremental.feed(state, text + " ")
    cache = incremental._piece_tokens
    assert 0 < len(cache) <= PIECE_CACHE_SIZE
    assert all(len(p) <= PIECE_CACHE_MAX_CHARS and len(ids) <= PIECE_CACHE_MAX_TOKENS for p, (ids, _) in cache.items())


def test_token_deltas_of_prose_are_not_encoded_again_and_mostly_skip_the_pre_tokenizer(
    counting: CountingTokenizer,
) -> None:
    prose = ("Streaming moderation reads a reply as it is written, one token at a time, and decides early "
             "whether the conversation is safe, controversial or unsafe. ") * 40
    spans = counting.encode_text_spans(prose).spans
    deltas = [prose[a:b] for (a, _), (b, _) in zip(spans, [*spans[1:], (len(prose), 0)], strict=True) if b > a]
    incremental = IncrementalTokenizer(counting)
    counting.chars = counting.calls = counting.encodes = 0
    state = IncrementalState()
    ids: list[int] = []
    for delta in deltas:
        ids += incremental.feed(state, delta).ids
    ids += incremental.finish(state).ids
    assert ids == counting.encode_text(prose)
    assert counting.encodes == 1                      # finish() only: pieces are tokenized on their own
    assert counting.calls - counting.encodes < len(deltas) / 2   # a delta ending a held word needs no pre-tokenizer
