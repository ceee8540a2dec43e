"""Reading conversations files: the spec's JSONL shape, with errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.conversations import Conversation, Message, read_conversations, write_conversations
from pipeline.errors import UserError


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "convs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_the_spec_example_with_optional_tenant_and_reasoning(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        json.dumps({"conversation_id": "a", "tenant": "acme", "messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "r", "reasoning": "t"}]}),
        "",
        json.dumps({"conversation_id": "b", "messages": [{"role": "system", "content": "s"}]}),
    )
    assert read_conversations(path) == [
        Conversation("a", "acme", (Message("user", "q"), Message("assistant", "r", "t"))),
        Conversation("b", None, (Message("system", "s"),)),
    ]


def test_write_then_read_gives_the_same_conversations(tmp_path: Path) -> None:
    convs = [Conversation("x\u2028y", None, (Message("user", "line\u2028sep 😀"),)),
             Conversation("z", "t", (Message("assistant", "", "why"),))]
    write_conversations(tmp_path / "c.jsonl", convs)
    assert read_conversations(tmp_path / "c.jsonl") == convs


@pytest.mark.parametrize(("line", "problem"), [
    ("{not json", "not valid JSON"),
    ("[]", "expected a JSON object"),
    ('{"conversation_id": "", "messages": [{"role": "user", "content": "x"}]}', "conversation_id"),
    ('{"conversation_id": "' + "c" * 257 + '", "messages": [{"role": "user", "content": "x"}]}', "1 to 256"),
    ('{"conversation_id": "c", "messages": []}', "non-empty list"),
    ('{"conversation_id": "c", "messages": [{"role": "bot", "content": "x"}]}', "message 0: role 'bot'"),
    ('{"conversation_id": "c", "messages": [{"role": "user", "content": 3}]}', "'content' must be a string"),
    ('{"conversation_id": "c", "messages": [{"role": "user", "content": "x", "reasoning": "r"}]}',
     "only assistant messages"),
    ('{"conversation_id": "c", "msgs": []}', "unknown field(s) msgs"),
    ('{"conversation_id": "c", "tenant": 5, "messages": [{"role": "user", "content": "x"}]}', "'tenant'"),
    ('{"conversation_id": "c", "tenant": "", "messages": [{"role": "user", "content": "x"}]}', "1 to 128"),
])
def test_a_bad_line_is_reported_with_its_line_number(tmp_path: Path, line: str, problem: str) -> None:
    good = '{"conversation_id": "ok", "messages": [{"role": "user", "content": "x"}]}'
    path = _write(tmp_path, good, line)
    with pytest.raises(UserError) as caught:
        read_conversations(path)
    assert f"{path}:2" in str(caught.value)
    assert problem in str(caught.value)


def test_a_repeated_conversation_id_is_refused(tmp_path: Path) -> None:
    line = '{"conversation_id": "same", "messages": [{"role": "user", "content": "x"}]}'
    with pytest.raises(UserError, match="already used on line 1"):
        read_conversations(_write(tmp_path, line, line))


def test_missing_and_empty_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_conversations(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="no conversations"):
        read_conversations(_write(tmp_path, ""))
