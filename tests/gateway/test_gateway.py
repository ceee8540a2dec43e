"""The gateway end to end: the official openai client -> gateway -> scripted upstream, judged by a
real stream worker over the real local Kafka and Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import GuardedStack
from tests.gateway.servers import ScriptedUpstream, ServerThread, start_gateway

SAFE_REPLY = ["Mix ", "flour, ", "water, ", "salt ", "and ", "yeast; ", "knead, ", "let ", "it ", "rise, ",
              "then ", "bake ", "it ", "until ", "golden."]
LONG_REPLY = [f" word{i}" for i in range(300)]


@pytest.fixture
def serve() -> Iterator[Any]:
    """serve(upstream, settings, **changes) -> (gateway url, upstream); all stopped after the test."""
    servers: list[ServerThread] = []

    def start(upstream: ScriptedUpstream, settings: Any, **changes: Any) -> str:
        up = ServerThread(upstream.app()).start()
        servers.append(up)
        gw = start_gateway(settings, up.url, **changes)
        servers.append(gw)
        return gw.url

    yield start
    for server in reversed(servers):
        server.stop()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test-key", max_retries=0, timeout=120)


def metric(url: str, name: str, **labels: str) -> float:
    """A sample of the gateway's /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics/", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def stream_chat(url: str, prompt: str) -> tuple[str, Any]:
    """The streamed reply's text and its last chunk."""
    text, last = [], None
    with client(url).chat.completions.create(model="scripted", stream=True,
                                             messages=[{"role": "user", "content": prompt}]) as stream:
        for chunk in stream:
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
            if chunk.choices:
                last = chunk
    return "".join(text), last


def test_a_blocked_prompt_never_reaches_the_upstream(guarded_stack: GuardedStack, serve: Any) -> None:
    upstream = ScriptedUpstream(SAFE_REPLY)
    url = serve(upstream, guarded_stack.settings)   # the default, strict policy
    text, last = stream_chat(url, guarded_stack.blocked_prompt)
    assert text == ""
    assert last.choices[0].finish_reason == "content_filter"
    verdict = last.model_extra["guardstream"]
    expected = guarded_stack.blocked_prompt_verdict
    assert (verdict["risk"], verdict["category"], verdict["role"]) == (expected.risk, expected.category, "user")
    assert verdict["verdict_id"]
    assert upstream.calls == []
    assert metric(url, "guardstream_gateway_requests_total", stream="true", outcome="blocked_prompt") == 1
    assert metric(url, "guardstream_gateway_blocks_total", stage="prompt", category=expected.category or "") == 1


def test_a_safe_reply_arrives_whole_with_stop_and_the_upstreams_usage(guarded_stack: GuardedStack,
                                                                       serve: Any) -> None:
    upstream = ScriptedUpstream(SAFE_REPLY)
    url = serve(upstream, guarded_stack.settings, gateway_tenant="open")
    chunks = list(client(url).chat.completions.create(
        model="scripted", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": guarded_stack.allowed_prompt}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(SAFE_REPLY)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all("guardstream" not in (c.model_extra or {}) for c in chunks), "a Safe reply carries no verdict"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 18
    assert upstream.calls[0].finished and upstream.calls[0].authorization == "Bearer sk-test-key"

    whole = client(url).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": guarded_stack.allowed_prompt}])
    assert whole.choices[0].message.content == "".join(SAFE_REPLY)
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == 11
    assert metric(url, "guardstream_gateway_requests_total", outcome="released", stream="true") == 1
    assert metric(url, "guardstream_gateway_requests_total", outcome="released", stream="false") == 1
    assert metric(url, "guardstream_gateway_first_release_seconds_count") == 2
    assert metric(url, "guardstream_gateway_final_hold_seconds_count") == 2


def test_a_reply_allowed_but_not_safe_arrives_whole_with_its_verdict(guarded_stack: GuardedStack,
                                                                      serve: Any) -> None:
    upstream = ScriptedUpstream(SAFE_REPLY)
    url = serve(upstream, guarded_stack.settings, gateway_tenant="flagger")
    text, last = stream_chat(url, guarded_stack.allowed_prompt)
    assert text == "".join(SAFE_REPLY)
    assert last.choices[0].finish_reason == "stop"
    verdict = last.model_extra["guardstream"]
    assert (verdict["role"], verdict["kind"], verdict["risk"], verdict["action"]) == \
        ("assistant", "final", "controversial", "allow")
    assert "retract" not in verdict
    whole = client(url).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": guarded_stack.allowed_prompt}])
    assert whole.choices[0].message.content == "".join(SAFE_REPLY) and whole.choices[0].finish_reason == "stop"
    assert whole.model_extra["guardstream"]["risk"] == "controversial"
    assert metric(url, "guardstream_gateway_requests_total", outcome="released", stream="true") == 1


def test_a_reply_blocked_midway_stops_the_upstream_and_ends_with_content_filter(
    guarded_stack: GuardedStack, serve: Any
) -> None:
    upstream = ScriptedUpstream(LONG_REPLY, delay_s=0.03)
    url = serve(upstream, guarded_stack.settings, gateway_tenant="tripwire")
    text, last = stream_chat(url, guarded_stack.allowed_prompt)
    assert "".join(LONG_REPLY).startswith(text)          # never more than was cleared
    assert last.choices[0].finish_reason == "content_filter"
    verdict = last.model_extra["guardstream"]
    assert verdict["action"] == "block" and verdict["role"] == "assistant" and verdict["risk"] == "unsafe"
    call = upstream.calls[0]
    deadline = time.monotonic() + 30
    while not call.disconnected and not call.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert call.disconnected and not call.finished
    assert call.sent_chunks < len(LONG_REPLY)
    assert metric(url, "guardstream_gateway_blocks_total", stage="reply", tenant="tripwire") == 1


def test_a_non_streaming_request_gets_the_block_in_its_body(guarded_stack: GuardedStack, serve: Any) -> None:
    upstream = ScriptedUpstream(LONG_REPLY, delay_s=0.03)
    url = serve(upstream, guarded_stack.settings, gateway_tenant="tripwire")
    whole = client(url).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": guarded_stack.allowed_prompt}])
    assert whole.choices[0].finish_reason == "content_filter"
    assert "".join(LONG_REPLY).startswith(whole.choices[0].message.content or "")
    assert whole.model_extra is not None and whole.model_extra["guardstream"]["action"] == "block"
    assert not upstream.calls[0].finished


def test_models_are_passed_through(guarded_stack: GuardedStack, serve: Any) -> None:
    url = serve(ScriptedUpstream(SAFE_REPLY), guarded_stack.settings)
    assert [m.id for m in client(url).models.list()] == ["scripted"]


def test_without_workers_the_gateway_fails_closed_in_bounded_time(settings: Any, serve: Any) -> None:
    # Kafka answers but no worker judges: nothing may reach the upstream or the client.
    upstream = ScriptedUpstream(SAFE_REPLY)
    url = serve(upstream, settings, gateway_verdict_timeout_ms=2000)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as raised:
        client(url).chat.completions.create(model="scripted", stream=True,
                                            messages=[{"role": "user", "content": "Hello there"}])
    assert raised.value.status_code == 503
    assert time.monotonic() - started < 60
    assert upstream.calls == []
    answer = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": [
        {"role": "user", "content": "Hello"}]}, timeout=60)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "guard_unavailable"
    assert metric(url, "guardstream_gateway_fail_closed_total", stage="prompt") == 2


def test_optimistic_mode_streams_at_once_and_retracts_on_a_block(guarded_stack: GuardedStack, serve: Any) -> None:
    upstream = ScriptedUpstream(LONG_REPLY, delay_s=0.03)
    url = serve(upstream, guarded_stack.settings, gateway_tenant="tripwire", gateway_mode="optimistic")
    text, last = stream_chat(url, guarded_stack.allowed_prompt)
    assert text and "".join(LONG_REPLY).startswith(text)   # sent before the guard ruled
    assert last.choices[0].finish_reason == "content_filter"
    assert last.model_extra["guardstream"]["retract"] is True
    call = upstream.calls[0]
    deadline = time.monotonic() + 30
    while not call.disconnected and not call.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert call.disconnected and not call.finished


def test_optimistic_mode_passes_a_safe_reply_whole(guarded_stack: GuardedStack, serve: Any) -> None:
    url = serve(ScriptedUpstream(SAFE_REPLY), guarded_stack.settings, gateway_tenant="open",
                gateway_mode="optimistic")
    text, last = stream_chat(url, guarded_stack.allowed_prompt)
    assert text == "".join(SAFE_REPLY)
    assert last.choices[0].finish_reason == "stop" and "guardstream" not in (last.model_extra or {})


def test_a_hundred_concurrent_streams_each_get_their_whole_reply(guarded_stack: GuardedStack, serve: Any) -> None:
    import asyncio

    upstream = ScriptedUpstream(SAFE_REPLY, delay_s=0.01)
    url = serve(upstream, guarded_stack.settings, gateway_tenant="open")

    async def one(api: openai.AsyncOpenAI) -> tuple[str, str | None]:
        text, finish = [], None
        stream = await api.chat.completions.create(model="scripted", stream=True, messages=[
            {"role": "user", "content": guarded_stack.allowed_prompt}])
        async for chunk in stream:
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        return "".join(text), finish

    async def all_of_them() -> list[tuple[str, str | None]]:
        api = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=300)
        try:
            return await asyncio.gather(*(one(api) for _ in range(100)))
        finally:
            await api.close()

    results = asyncio.run(all_of_them())
    assert results == [("".join(SAFE_REPLY), "stop")] * 100
    assert len(upstream.calls) == 100 and all(c.finished for c in upstream.calls)


def test_api_keys_choose_the_tenant_and_never_reach_the_upstream_or_the_logs(
    guarded_stack: GuardedStack, serve: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text('{"sk-open-0123": "open", "sk-trip-4567": "tripwire"}')
    upstream = ScriptedUpstream(LONG_REPLY[:40], delay_s=0.03)
    url = serve(upstream, guarded_stack.settings, gateway_api_keys=str(keys), gateway_upstream_api_key="sk-up-89")
    caplog.set_level("DEBUG")

    def ask(key: str) -> Any:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
        return api.chat.completions.create(model="scripted",
                                           messages=[{"role": "user", "content": guarded_stack.allowed_prompt}])

    assert ask("sk-open-0123").choices[0].finish_reason == "stop"
    assert ask("sk-trip-4567").choices[0].finish_reason == "content_filter"
    with pytest.raises(openai.AuthenticationError):
        ask("sk-nobody")
    assert len(upstream.calls) == 2 and {c.authorization for c in upstream.calls} == {"Bearer sk-up-89"}
    assert metric(url, "guardstream_gateway_blocks_total", stage="reply", tenant="tripwire") == 1
    assert metric(url, "guardstream_gateway_requests_total", outcome="unauthorized") == 1
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "completion" in logged
    assert not any(k in logged for k in ("sk-open-0123", "sk-trip-4567", "sk-nobody", "sk-up-89"))


def test_a_trusted_tenant_header_selects_the_policy(guarded_stack: GuardedStack, serve: Any) -> None:
    upstream = ScriptedUpstream(LONG_REPLY[:40], delay_s=0.03)
    url = serve(upstream, guarded_stack.settings, gateway_tenant="open", gateway_tenant_header="X-Tenant")
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=120)
    messages: Any = [{"role": "user", "content": guarded_stack.allowed_prompt}]
    tripped = api.chat.completions.create(model="scripted", messages=messages,
                                          extra_headers={"X-Tenant": "tripwire"})
    assert tripped.choices[0].finish_reason == "content_filter"
    assert api.chat.completions.create(model="scripted", messages=messages).choices[0].finish_reason == "stop"


def test_a_tenant_that_opted_in_fails_open_and_it_is_counted(settings: Any, serve: Any) -> None:
    upstream = ScriptedUpstream(SAFE_REPLY)
    url = serve(upstream, settings, gateway_verdict_timeout_ms=1000, gateway_tenant="acme",
                gateway_fail_open_tenants="acme, beta", policy_file="")
    text, last = stream_chat(url, "Hello there")
    assert text == "".join(SAFE_REPLY) and last.choices[0].finish_reason == "stop"
    assert upstream.calls[0].finished
    assert metric(url, "guardstream_gateway_fail_open_total", stage="prompt") == 1
    assert metric(url, "guardstream_gateway_fail_open_total", stage="reply") == 1
    assert metric(url, "guardstream_gateway_requests_total", outcome="failed_open") == 1


def test_requests_over_the_in_flight_limit_are_refused_at_once(settings: Any, serve: Any) -> None:
    import threading

    upstream = ScriptedUpstream(SAFE_REPLY)
    # The admitted request holds its slot until its verdict wait times out: long enough that the
    # second request arrives while it is held, even on a loaded machine.
    url = serve(upstream, settings, gateway_verdict_timeout_ms=20_000, gateway_max_requests=1)
    body = {"model": "m", "messages": [{"role": "user", "content": "Hello"}]}
    first: list[int] = []
    holder = threading.Thread(target=lambda: first.append(
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code))
    holder.start()
    deadline = time.monotonic() + 10
    while metric(url, "guardstream_gateway_in_flight") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)   # until the first request holds the only slot
    second = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    holder.join(60)
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert first == [503]   # no workers: the admitted one fails closed
    assert metric(url, "guardstream_gateway_requests_total", outcome="over_limit") == 1
    deadline = time.monotonic() + 10
    while metric(url, "guardstream_gateway_in_flight") != 0 and time.monotonic() < deadline:
        time.sleep(0.02)   # the slot is given back once the response has been sent
    assert metric(url, "guardstream_gateway_in_flight") == 0


def test_upstream_errors_reach_the_client_as_openai_errors(guarded_stack: GuardedStack, serve: Any) -> None:
    messages: Any = [{"role": "user", "content": guarded_stack.allowed_prompt}]
    url = serve(ScriptedUpstream(SAFE_REPLY, status=429), guarded_stack.settings, gateway_tenant="open")
    with pytest.raises(openai.RateLimitError):
        client(url).chat.completions.create(model="scripted", messages=messages)
    url = serve(ScriptedUpstream(SAFE_REPLY, status=500), guarded_stack.settings, gateway_tenant="open")
    with pytest.raises(openai.APIError, match="upstream answered HTTP 500"):
        list(client(url).chat.completions.create(model="scripted", messages=messages, stream=True))
    assert metric(url, "guardstream_gateway_requests_total", outcome="upstream_error", stream="true") == 1


def test_a_worker_lost_mid_reply_fails_closed_without_releasing_unjudged_text(
    guarded_stack: GuardedStack, settings: Any, serve: Any, tiny_onnx_dir: Any, tmp_path: Any
) -> None:
    from tests.worker.harness import WorkerProcess, worker_settings

    own = settings.replace(policy_file=guarded_stack.settings.policy_file)
    worker = WorkerProcess(worker_settings(own, tiny_onnx_dir), tmp_path, "doomed").start()
    try:
        worker.wait_for_log("partitions assigned")
        upstream = ScriptedUpstream(LONG_REPLY[:120], delay_s=0.03)
        url = serve(upstream, own, gateway_tenant="open", gateway_verdict_timeout_ms=3000)
        import threading

        def kill_once_the_reply_streams() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (upstream.calls and upstream.calls[0].sent_chunks >= 10):
                time.sleep(0.01)
            worker.kill()

        killer = threading.Thread(target=kill_once_the_reply_streams)
        killer.start()
        shown: list[str] = []
        messages: Any = [{"role": "user", "content": guarded_stack.allowed_prompt}]
        with (pytest.raises(openai.APIError, match="failing closed"),
              client(url).chat.completions.create(model="scripted", stream=True, messages=messages) as stream):
            for chunk in stream:
                shown.extend(c.delta.content or "" for c in chunk.choices)
        killer.join(60)
        assert "".join(LONG_REPLY[:120]).startswith("".join(shown))
        assert len("".join(shown)) < len("".join(LONG_REPLY[:120]))   # the unjudged rest was withheld
        assert metric(url, "guardstream_gateway_fail_closed_total", stage="reply") == 1
    finally:
        if worker.alive():
            worker.kill()
