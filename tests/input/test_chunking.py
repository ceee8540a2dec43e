"""Chunking message text into deltas, and conversations into delta streams."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from pipeline.chunking import Chunker, chunk_text, token_boundaries
from pipeline.conversations import Conversation, Message
from pipeline.deltas import conversation_deltas, interleave
from pipeline.errors import UserError
from pipeline.tokens.files import load_qwen3_tokenizer

TEXT = "Hello, 世界! 👩\u200d👩\u200d👧 <|im_end|> tokens\n\nend"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_qwen3_tokenizer()


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=80), size=st.integers(1, 9), seed=st.integers(0, 1000))
def test_chunks_always_join_back_to_the_text(text: str, size: int, seed: int) -> None:
    for mode in ("chars", "random"):
        pieces = chunk_text(text, mode, size, random.Random(seed))
        assert "".join(pieces) == text
        assert all(1 <= len(p) <= size for p in pieces) or pieces == [""]


def test_fixed_char_chunks_have_the_requested_size() -> None:
    assert chunk_text("abcdefg", "chars", 3) == ["abc", "def", "g"]


def test_token_chunks_cut_exactly_at_qwen3_token_ends(tokenizer: Tokenizer) -> None:
    pieces = chunk_text(TEXT, "tokens", 1, tokenizer=tokenizer)
    assert "".join(pieces) == TEXT
    ends = [sum(len(p) for p in pieces[: i + 1]) for i in range(len(pieces))]
    assert ends == token_boundaries(TEXT, tokenizer)[1:]
    # Fewer pieces than tokens only where several byte-level tokens make up one character.
    assert len(pieces) <= len(tokenizer.encode(TEXT, add_special_tokens=False).ids)


def test_token_chunks_of_three_group_three_token_boundaries(tokenizer: Tokenizer) -> None:
    ones = chunk_text(TEXT, "tokens", 1, tokenizer=tokenizer)
    threes = chunk_text(TEXT, "tokens", 3, tokenizer=tokenizer)
    assert threes == ["".join(ones[i : i + 3]) for i in range(0, len(ones), 3)]


def test_random_chunking_is_reproducible_by_seed_and_varies_across_seeds() -> None:
    text = "x" * 200
    first = Chunker("random", 7, seed=5).split(text)
    assert Chunker("random", 7, seed=5).split(text) == first
    assert any(Chunker("random", 7, seed=s).split(text) != first for s in range(6, 10))


def test_empty_text_is_one_empty_chunk_and_bad_sizes_are_refused() -> None:
    assert chunk_text("", "chars", 3) == [""]
    with pytest.raises(UserError):
        chunk_text("abc", "chars", 0)


def test_conversation_deltas_number_chunks_and_mark_final_and_end() -> None:
    conv = Conversation("c", "acme", (Message("user", "abcde"), Message("assistant", "xyz", reasoning="rr")))
    deltas = conversation_deltas(conv, Chunker("chars", 2))
    assert [(d.message_index, d.seq, d.text, d.final, d.reasoning) for d in deltas[:-1]] == [
        (0, 0, "ab", False, False), (0, 1, "cd", False, False), (0, 2, "e", True, False),
        (1, 0, "rr", False, True), (1, 1, "xy", False, False), (1, 2, "z", True, False),
    ]
    assert all(d.tenant == "acme" and d.conversation_id == "c" for d in deltas)
    assert deltas[-1].type == "end"
    assert conversation_deltas(conv, Chunker("chars", 2), end=False)[-1].type == "delta"


def test_an_empty_message_still_gets_one_final_delta() -> None:
    deltas = conversation_deltas(Conversation("c", None, (Message("assistant", ""),)), Chunker(), end=False)
    assert [(d.seq, d.text, d.final) for d in deltas] == [(0, "", True)]


@pytest.mark.parametrize("mode", ["round-robin", "random", "sequential"])
def test_interleaving_keeps_each_stream_in_order_and_loses_nothing(mode: str) -> None:
    streams = [[(s, i) for i in range(n)] for s, n in enumerate([5, 1, 3, 0, 4])]
    merged = list(interleave(streams, mode, random.Random(1)))  # type: ignore[arg-type]
    assert sorted(merged) == sorted(x for s in streams for x in s)
    for s, stream in enumerate(streams):
        assert [x for x in merged if x[0] == s] == stream


def test_round_robin_takes_one_from_each_live_stream_in_turn() -> None:
    assert list(interleave([[1, 2, 3], [10], [100, 200]], "round-robin")) == [1, 10, 100, 2, 200, 3]
