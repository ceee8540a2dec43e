"""The gateway's request handling that needs no broker: message parsing, addresses, CLI errors."""

from __future__ import annotations

import pytest

from pipeline.errors import UserError
from pipeline.gateway.completion import BadRequest, message_texts
from workers.cli import main
from workers.commands.gateway import parse_listen


def test_messages_become_guard_turns_with_their_text_parts_joined() -> None:
    body = {"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "image_url", "image_url": {}},
                                     {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None},
        {"role": "tool", "content": "42"},
    ]}
    assert message_texts(body) == [("system", "Be brief."), ("user", "Hello there"), ("assistant", ""),
                                   ("system", "42")]


@pytest.mark.parametrize("body", [{}, {"messages": []}, {"messages": "hi"}, {"messages": [3]},
                                  {"messages": [{"role": "wizard", "content": "x"}]},
                                  {"messages": [{"role": "user", "content": 5}]}])
def test_malformed_messages_are_refused_with_a_reason(body: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        message_texts(body)


def test_listen_must_be_host_and_port() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("8080", "host:", "host:99999", ":80"):
        with pytest.raises(UserError, match="HOST:PORT"):
            parse_listen(bad)


def test_the_command_says_how_to_give_the_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "--upstream", "localhost:8000"]) == 2
    assert "--upstream http://" in capsys.readouterr().err
