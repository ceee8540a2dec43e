"""The gateway's request handling that needs no broker: messages, tenants and keys, addresses, CLI errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import UserError
from pipeline.gateway.completion import BadRequest, message_texts
from pipeline.gateway.tenants import BadTenant, TenantResolver, Unauthorized, load_key_map
from pipeline.gateway.upstream import forwarded_headers
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


def test_api_keys_map_to_tenants_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("sk-alpha: acme\nsk-beta: research\n")
    resolver = TenantResolver(keys=load_key_map(str(keys)), known=frozenset({"acme"}))
    assert resolver.resolve({"authorization": "Bearer sk-alpha"}) == "acme"
    assert resolver.resolve({"authorization": "bearer sk-beta"}) == "research"
    for headers in ({}, {"authorization": "Bearer sk-gamma"}, {"authorization": "Basic sk-alpha"}):
        with pytest.raises(Unauthorized):
            resolver.resolve(headers)
    assert (resolver.label("acme"), resolver.label("research"), resolver.label(None)) == ("acme", "other", "")


def test_a_trusted_tenant_header_is_checked_and_falls_back_to_the_default() -> None:
    resolver = TenantResolver(default="base", header="x-tenant")
    assert resolver.resolve({"x-tenant": "acme"}) == "acme"
    assert resolver.resolve({}) == "base"
    for bad in ("", "a\nb", "x" * 129):
        with pytest.raises(BadTenant):
            resolver.resolve({"x-tenant": bad})
    assert TenantResolver(default="base").resolve({"x-tenant": "acme"}) == "base"   # header off: ignored


@pytest.mark.parametrize("text", ["[1, 2]", "{}", "sk-a: ''", "sk-a: [x]", ": :"])
def test_a_bad_key_file_is_refused_without_quoting_it(tmp_path: Path, text: str) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(text)
    with pytest.raises(UserError) as raised:
        load_key_map(str(keys))
    assert "sk-a" not in str(raised.value)


def test_upstream_credentials_are_the_gateways_or_the_clients_never_the_gateway_key() -> None:
    client = {"authorization": "Bearer sk-client", "openai-project": "p", "cookie": "c"}
    assert forwarded_headers(client) == {"authorization": "Bearer sk-client", "openai-project": "p"}
    assert forwarded_headers(client, client_key_is_ours=True) == {"openai-project": "p"}
    assert forwarded_headers(client, "sk-up", True)["authorization"] == "Bearer sk-up"


def test_config_never_prints_the_upstream_api_key(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GUARD_GATEWAY_UPSTREAM_API_KEY", "sk-upstream-secret-42")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "GUARD_GATEWAY_UPSTREAM_API_KEY" in out and "sk-upstream-secret-42" not in out


def test_the_command_names_missing_topics_before_serving(settings: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "--upstream", "http://127.0.0.1:9/v1", "--kafka-bootstrap", settings.kafka_bootstrap,
                 "--topic-verdicts", "no.such.topic.gw", "--listen", "127.0.0.1:18999"]) == 2
    assert "no.such.topic.gw do not exist" in capsys.readouterr().err


def test_long_text_is_cut_into_deltas_under_the_workers_size_limit() -> None:
    from pipeline.gateway.completion import MAX_DELTA_CHARS, pieces

    text = "é🙂a" * 5000
    cut = pieces(text)
    assert "".join(cut) == text and len(cut) == 4
    assert all(len(p.encode("utf-8")) <= 4 * MAX_DELTA_CHARS <= 65536 // 4 for p in cut)
    assert pieces("") == [""] and pieces("abc") == ["abc"]
