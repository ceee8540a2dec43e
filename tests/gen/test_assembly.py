"""Assembling complete messages from deltas (the generative worker's table values)."""

from __future__ import annotations

import copy

import pytest

from pipeline.gen.render import prompt_request, response_request
from schemas.messages import TokenDelta
from workers.generative.assembly import (
    AssemblyError,
    ConversationDraft,
    apply_delta,
    ready_for_ruling,
    stranded_messages,
)


def d(index: int, role: str, seq: int, text: str, final: bool = False, reasoning: bool = False) -> TokenDelta:
    return TokenDelta(conversation_id="c", message_index=index, role=role, seq=seq, text=text,  # type: ignore[arg-type]
                      final=final, reasoning=reasoning)


def test_chunks_in_any_order_assemble_the_message_text() -> None:
    draft = ConversationDraft()
    for delta in (d(0, "user", 2, "!", final=True), d(0, "user", 0, "hello "), d(0, "user", 1, "world")):
        apply_delta(draft, delta)
    assert draft.messages[0].text == "hello world!"
    assert ready_for_ruling(draft) == {0: prompt_request("hello world!")}


def test_repeated_chunks_change_nothing_before_and_after_completion() -> None:
    draft = ConversationDraft()
    assert apply_delta(draft, d(0, "user", 0, "a"))
    assert not apply_delta(draft, d(0, "user", 0, "a"))
    assert apply_delta(draft, d(0, "user", 1, "b", final=True))
    assert not apply_delta(draft, d(0, "user", 0, "a"))
    assert not apply_delta(draft, d(0, "user", 1, "b", final=True))
    assert draft.messages[0].text == "ab"


@pytest.mark.parametrize(
    "second",
    [d(0, "user", 1, "different"), d(0, "assistant", 1, "x"), d(0, "user", 0, "a", final=True)],
)
def test_contradicting_chunks_are_assembly_errors_and_change_nothing(second: TokenDelta) -> None:
    draft = ConversationDraft()
    apply_delta(draft, d(0, "user", 1, "b"))    # held: seq 0 is missing
    apply_delta(draft, d(0, "user", 2, "c"))
    before = copy.deepcopy(draft)
    with pytest.raises(AssemblyError):
        apply_delta(draft, second)
    assert draft == before


def test_a_repeat_of_an_assembled_chunk_is_ignored() -> None:
    # Its text is no longer held (work per delta stays O(delta)), so it is not compared.
    draft = ConversationDraft()
    apply_delta(draft, d(0, "user", 0, "a"))
    assert not apply_delta(draft, d(0, "user", 0, "other"))
    assert apply_delta(draft, d(0, "user", 0, "a", final=True))
    assert draft.messages[0].text == "a"


def test_chunk_past_the_final_seq_is_an_assembly_error() -> None:
    draft = ConversationDraft()
    apply_delta(draft, d(0, "user", 1, "b", final=True))
    with pytest.raises(AssemblyError):
        apply_delta(draft, d(0, "user", 2, "c"))


def test_assistant_waits_for_its_history_and_takes_the_nearest_user_message() -> None:
    draft = ConversationDraft()
    apply_delta(draft, d(2, "assistant", 0, "answer", final=True))
    apply_delta(draft, d(0, "user", 0, "first question", final=True))
    assert set(ready_for_ruling(draft)) == {0}
    assert stranded_messages(draft) == [2]
    apply_delta(draft, d(1, "user", 0, "second question", final=True))
    ready = ready_for_ruling(draft)
    assert ready[2] == response_request("second question", "answer")
    assert stranded_messages(draft) == []


def test_reasoning_chunks_are_kept_out_of_the_judged_text() -> None:
    draft = ConversationDraft()
    apply_delta(draft, d(0, "user", 0, "q", final=True))
    apply_delta(draft, d(1, "assistant", 0, "let me think", reasoning=True))
    apply_delta(draft, d(1, "assistant", 1, "the answer", final=True))
    assert ready_for_ruling(draft)[1] == response_request("q", "the answer")


def test_ruled_messages_are_not_ready_again() -> None:
    draft = ConversationDraft(tenant="acme")
    apply_delta(draft, d(0, "user", 0, "q", final=True))
    draft.messages[0].ruled = True
    assert ready_for_ruling(draft) == {}
