"""The long-message policy: elide the middle of the longest texts, keep head and tail, report it."""

from __future__ import annotations

import pytest

from pipeline.gen.checkpoint import GenModel
from pipeline.gen.grammar import RulingGrammar
from pipeline.gen.long_text import ContextTooSmall, fit_to_context
from pipeline.gen.moderator import GenModerator
from pipeline.gen.render import prompt_request, render_ids, response_request

HEAD = "BEGINNING-MARKER alpha bravo charlie. "
TAIL = " delta echo foxtrot ENDING-MARKER"
LONG = HEAD + " ".join(f"word{i}" for i in range(3000)) + TAIL


def test_a_text_that_fits_is_rendered_whole(gen_model: GenModel) -> None:
    request = prompt_request("a short question")
    fitted = fit_to_context(gen_model.tokenizer, request, 4000)
    assert fitted.truncated_tokens == 0
    assert fitted.request == request
    assert fitted.token_ids == render_ids(gen_model.tokenizer, request.turns)


def test_a_long_text_keeps_head_and_tail_and_fits_the_budget(gen_model: GenModel) -> None:
    budget = 900
    fitted = fit_to_context(gen_model.tokenizer, prompt_request(LONG), budget)
    assert len(fitted.token_ids) <= budget
    assert fitted.truncated_tokens > 0
    text = fitted.request.turns[0].content
    assert text.startswith(HEAD) and text.endswith(TAIL)
    assert f"[... {fitted.truncated_tokens} tokens elided ...]" in text


def test_the_shorter_message_stays_whole_when_the_longer_one_is_cut(gen_model: GenModel) -> None:
    fitted = fit_to_context(gen_model.tokenizer, response_request("short question", LONG), 900)
    assert fitted.request.turns[0].content == "short question"
    assert fitted.request.turns[1].content.endswith(TAIL)


def test_a_budget_below_the_instruction_itself_is_refused(gen_model: GenModel) -> None:
    with pytest.raises(ContextTooSmall):
        fit_to_context(gen_model.tokenizer, prompt_request(LONG), 100)


def test_a_long_message_still_gets_a_valid_ruling_marked_truncated(gen_model: GenModel) -> None:
    moderator = GenModerator(gen_model, context_tokens=1024)
    [result] = moderator.rule([response_request("question", LONG)])
    assert result.truncated_tokens > 0
    assert RulingGrammar("response").accepts(result.text)
