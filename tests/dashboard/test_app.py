"""The dashboard app against the real local Kafka: the live feed, the JSON views, history replay,
hostile records, text shown only when enabled, the gateway's /ui mount, and the command line."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from pipeline.config import Settings
from pipeline.dashboard.app import CLIENT_QUEUE, Dashboard, create_dashboard_app
from schemas.messages import TokenDelta, Verdict, encode
from tests.fixtures.stack import produce, produce_deltas
from tests.gateway.servers import ServerThread, free_port
from tests.worker.harness import settings_env

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kafka

# Ids and text a hostile producer may choose: markup, quotes, slashes, non-ASCII, lookalikes.
ODD_ID = 'conv/<script>alert("x")</script>?&id=é\u202e'
WORDS = ["Sure, ", "here is ", "how to ", "make a ", "bomb ", "at home."]


def reply_verdicts(cid: str, tenant: str = "acme") -> list[Verdict]:
    """A prompt allowed, then a reply cleared through seq 2 and blocked at 'bomb' (seq 4, char 28)."""
    base: dict[str, Any] = {"conversation_id": cid, "source": "stream", "model": "m", "ts_ms": 1, "tenant": tenant}
    return [
        Verdict(verdict_id=f"{cid}/0/stream/final/end", message_index=0, role="user", kind="final", risk="safe",
                action="allow", token_index=0, seq=0, char_offset=14, cleared_through_seq=0, latency_ms=40, **base),
        Verdict(verdict_id=f"{cid}/1/stream/progress/7", message_index=1, role="assistant", kind="progress",
                risk="safe", action="allow", token_index=7, cleared_through_seq=2, latency_ms=25, **base),
        Verdict(verdict_id=f"{cid}/1/stream/flag/9", message_index=1, role="assistant", kind="flag", risk="unsafe",
                action="block", category="Violent", token_index=9, seq=4, char_offset=28, latency_ms=30, **base),
        Verdict(verdict_id=f"{cid}/1/stream/final/end", message_index=1, role="assistant", kind="final",
                risk="unsafe", action="block", category="Violent", token_index=9, seq=4, char_offset=28,
                latency_ms=31, **base),
    ]


def reply_deltas(cid: str, tenant: str = "acme") -> list[TokenDelta]:
    prompt = TokenDelta(conversation_id=cid, message_index=0, role="user", seq=0, text="How do I do it?",
                        final=True, tenant=tenant)
    return [prompt] + [TokenDelta(conversation_id=cid, message_index=1, role="assistant", seq=i, text=w,
                                  final=i == len(WORDS) - 1, tenant=tenant) for i, w in enumerate(WORDS)]


def produce_verdicts(settings: Settings, verdicts: list[Verdict]) -> None:
    produce(settings, settings.topic_verdicts, ((v.conversation_id, encode(v)) for v in verdicts))


@pytest.fixture
def serve() -> Iterator[Callable[[Settings], ServerThread]]:
    servers: list[ServerThread] = []

    def start(settings: Settings) -> ServerThread:
        server = ServerThread(create_dashboard_app(settings)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def events_until(url: str, check: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Read the live feed until ``check`` accepts an event's data; every event read, in order."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=timeout_s) as client, connect_sse(client, "GET", f"{url}/ui/events") as source:
        for event in source.iter_sse():
            data = json.loads(event.data)
            data["_event"] = event.event
            seen.append(data)
            if check(data) or time.monotonic() > deadline:
                break
    return seen


def wait_json(url: str, check: Callable[[httpx.Response], bool], timeout_s: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(url, timeout=10)
        if check(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_the_live_feed_and_views_show_a_blocked_reply_with_its_text_when_enabled(
        settings: Settings, serve: Callable[[Settings], ServerThread]) -> None:
    server = serve(settings.replace(dashboard_show_text=True))
    first = events_until(server.url, lambda d: d["_event"] == "snapshot")
    assert first[0]["_event"] == "snapshot" and first[0]["stats"]["show_text"] is True
    produce_deltas(settings, reply_deltas(ODD_ID))
    produce_verdicts(settings, reply_verdicts(ODD_ID))
    seen = events_until(server.url, lambda d: any(c["id"] == ODD_ID and c["blocked"]
                                                   for c in d.get("conversations", [])))
    summary = next(c for c in seen[-1]["conversations"] if c["id"] == ODD_ID)
    assert summary == {**summary, "tenant": "acme", "risk": "unsafe", "blocked": True, "messages": 2}

    detail = httpx.get(f"{server.url}/ui/api/conversation", params={"id": ODD_ID}).json()
    prompt, reply = detail["message_list"]
    assert "".join(p["text"] for p in prompt["pieces"]) == "How do I do it?"
    assert prompt["stream_final"]["action"] == "allow"
    texts = [p["text"] for p in reply["pieces"]]
    assert "".join(texts) == "".join(WORDS)
    blocked = [p for p in reply["pieces"] if p.get("blocking")]
    assert [p["text"] for p in blocked] == ["bomb "] and blocked[0]["risk"] == "unsafe"
    assert {m["kind"] for m in blocked[0]["marks"]} == {"flag", "final"}
    assert all(p["withheld"] for p in reply["pieces"][texts.index("bomb "):])
    assert reply["cleared_through_seq"] == 2

    stats = httpx.get(f"{server.url}/ui/api/stats").json()
    assert stats["counts"]["stream"]["risk"]["unsafe"] == 1 and stats["counts"]["stream"]["blocked"] == 1
    assert stats["counts"]["stream"]["tenant"]["acme"] == {"safe": 1, "controversial": 0, "unsafe": 1}
    assert stats["latency_ms"]["stream"]["n"] == 4
    listed = httpx.get(f"{server.url}/ui/api/conversations", params={"tenant": "acme", "risk": "unsafe"}).json()
    assert [c["id"] for c in listed["conversations"]] == [ODD_ID]
    assert httpx.get(f"{server.url}/ui/api/conversations", params={"tenant": "beta"}).json()["conversations"] == []
    assert httpx.get(f"{server.url}/ui/api/conversations", params={"risk": "bad"}).status_code == 400


def test_without_show_text_guard_in_is_not_read_and_no_text_is_served(
        settings: Settings, serve: Callable[[Settings], ServerThread]) -> None:
    server = serve(settings)
    events_until(server.url, lambda d: d["_event"] == "snapshot")
    produce_deltas(settings, reply_deltas("quiet"))
    produce_verdicts(settings, reply_verdicts("quiet"))
    response = wait_json(f"{server.url}/ui/api/conversation?id=quiet",
                         lambda r: r.status_code == 200 and r.json()["blocked"])
    detail = response.json()
    assert detail["show_text"] is False
    reply = detail["message_list"][1]
    assert all(p["text"] is None for p in reply["pieces"])
    assert [p["seq"] for p in reply["pieces"]] == list(range(5))   # positions up to the flag's seq
    assert [p["seq"] for p in reply["pieces"] if p.get("blocking")] == [4]
    assert not any(word.strip() in response.text for word in WORDS)
    assert httpx.get(f"{server.url}/ui/api/stats").json()["deltas_per_s"] == 0


def test_hostile_records_on_both_topics_are_counted_and_skipped(
        settings: Settings, serve: Callable[[Settings], ServerThread]) -> None:
    server = serve(settings.replace(dashboard_show_text=True, max_text_bytes=1024))
    events_until(server.url, lambda d: d["_event"] == "snapshot")
    garbage: list[tuple[str | bytes | None, bytes]] = [
        ("x", b"{not json"), ("x", b""), (None, b"\xff\xfe"), ("x", b'{"verdict_id": 1}'), ("x", b"[" * 100_000),
        ("x", json.dumps({"conversation_id": "x", "message_index": 0, "role": "user", "source": "stream",
                          "kind": "final", "risk": "fatal", "action": "allow", "model": "m", "verdict_id": "v",
                          "ts_ms": 1}).encode()),
    ]
    produce(settings, settings.topic_verdicts, garbage)
    huge = TokenDelta(conversation_id="huge", message_index=0, role="user", seq=0, text="y" * 500_000)
    wrong_key = TokenDelta(conversation_id="keyed", message_index=0, role="user", seq=0, text="hi")
    produce(settings, settings.topic_in, [*garbage, ("huge", encode(huge)), ("other", encode(wrong_key))])
    produce_deltas(settings, reply_deltas("fine"))
    produce_verdicts(settings, reply_verdicts("fine"))
    response = wait_json(f"{server.url}/ui/api/stats",
                         lambda r: r.json()["bad_records"].get("verdicts", 0) >= len(garbage)
                         and r.json()["bad_records"].get("deltas", 0) >= len(garbage) + 2
                         and r.json()["counts"]["stream"]["blocked"] == 1)
    stats = response.json()
    assert stats["bad_records"] == {"verdicts": len(garbage), "deltas": len(garbage) + 2}
    detail = httpx.get(f"{server.url}/ui/api/conversation", params={"id": "fine"}).json()
    assert "".join(p["text"] for p in detail["message_list"][1]["pieces"]) == "".join(WORDS)
    assert httpx.get(f"{server.url}/ui/api/conversation", params={"id": "huge"}).status_code == 404
    assert httpx.get(f"{server.url}/ui/api/conversation", params={"id": "x" * 300}).status_code == 400
    assert httpx.get(f"{server.url}/ui/healthz").json() == {"ok": True}
    metrics = httpx.get(f"{server.url}/ui/metrics/").text
    assert 'guardstream_dashboard_records_total{outcome="undecodable",topic="verdicts"} 6.0' in metrics


def test_history_replays_a_conversation_from_the_start_of_the_verdict_topic(
        settings: Settings, serve: Callable[[Settings], ServerThread]) -> None:
    old = reply_verdicts("old")
    produce_verdicts(settings, old + reply_verdicts("other") + reply_verdicts("old-suffix"))
    server = serve(settings)   # starts at the end: the live view never saw "old"
    assert httpx.get(f"{server.url}/ui/api/conversation", params={"id": "old"}).status_code == 404
    history = httpx.get(f"{server.url}/ui/api/history", params={"id": "old"}, timeout=60).json()
    assert history["complete"] is True and history["scanned"] == 12
    assert [v["verdict_id"] for v in history["verdicts"]] == [v.verdict_id for v in old]
    assert history["verdicts"][2] == {**history["verdicts"][2], "kind": "flag", "category": "Violent",
                                      "seq": 4, "char_offset": 28, "action": "block"}
    empty = httpx.get(f"{server.url}/ui/api/history", params={"id": "never"}, timeout=60).json()
    assert empty["verdicts"] == [] and empty["complete"] is True


def test_earliest_start_rebuilds_the_view_from_what_the_topic_retains(
        settings: Settings, serve: Callable[[Settings], ServerThread]) -> None:
    produce_verdicts(settings, reply_verdicts("before"))
    server = serve(settings.replace(dashboard_start="earliest"))
    response = wait_json(f"{server.url}/ui/api/conversation?id=before", lambda r: r.status_code == 200)
    assert response.json()["blocked"] is True


def test_a_client_that_stops_reading_is_disconnected_and_the_others_go_on(settings: Settings) -> None:
    async def scenario() -> None:
        dashboard = Dashboard(settings)
        slow: asyncio.Queue[str | None] = asyncio.Queue(maxsize=CLIENT_QUEUE)
        fast: asyncio.Queue[str | None] = asyncio.Queue(maxsize=CLIENT_QUEUE)
        dashboard.clients |= {slow, fast}
        for _ in range(CLIENT_QUEUE + 1):
            dashboard.broadcast(dashboard.update())
            while not fast.empty():
                fast.get_nowait()
        assert dashboard.clients == {fast}
        assert slow.qsize() == 1 and slow.get_nowait() is None   # its stream ends; nothing else held
        assert dashboard.metrics.registry.get_sample_value("guardstream_dashboard_clients_dropped_total") == 1

    asyncio.run(scenario())


def test_the_gateway_serves_the_view_at_ui_only_when_turned_on(settings: Settings) -> None:
    from pipeline.gateway.app import create_app

    on = ServerThread(create_app(settings.replace(upstream="http://127.0.0.1:9/v1", gateway_ui=True))).start()
    try:
        redirect = httpx.get(f"{on.url}/ui")
        assert redirect.status_code == 307 and redirect.headers["location"].endswith("/ui/")
        page = httpx.get(f"{on.url}/ui/")
        assert page.status_code == 200 and "static/app.js" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "textContent" in httpx.get(f"{on.url}/ui/static/app.js").text
        assert httpx.get(f"{on.url}/ui/static/../app.py").status_code == 404
        produce_verdicts(settings, reply_verdicts("via-gateway"))
        assert wait_json(f"{on.url}/ui/api/conversation?id=via-gateway", lambda r: r.status_code == 200).json()[
            "blocked"]
    finally:
        on.stop()
    off = ServerThread(create_app(settings.replace(upstream="http://127.0.0.1:9/v1"))).start()   # the default
    try:
        assert httpx.get(f"{off.url}/ui/").status_code == 404
    finally:
        off.stop()


def test_the_page_and_its_assets_are_in_the_wheel(tmp_path: Path) -> None:
    """A non-editable install serves the page too: the assets are package data."""
    # Built from a copy: a build in the checkout would leave build/ and *.egg-info behind.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("pipeline", "workers", "schemas"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
                   check=True, timeout=300, cwd=tmp_path)
    (wheel,) = tmp_path.glob("guardstream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("index.html", "app.js", "style.css"):
        assert f"pipeline/dashboard/static/{asset}" in names


def test_command_line_errors_and_graceful_shutdown(settings: Settings, tmp_path: Path) -> None:
    env = settings_env(settings)
    cmd = [sys.executable, "-m", "workers.cli", "dashboard"]
    bad = subprocess.run([*cmd, "--listen", "nowhere"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert bad.returncode == 2 and "--listen 'nowhere' is not HOST:PORT" in bad.stderr
    missing = subprocess.run([*cmd, "--listen", "127.0.0.1:1", "--show-text", "--topic-in", "no.such.topic"],
                             env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert missing.returncode == 2 and "no.such.topic do not exist" in missing.stderr
    port = free_port()
    log = (tmp_path / "dashboard.log").open("wb")
    proc = subprocess.Popen([*cmd, "--listen", f"127.0.0.1:{port}"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ui/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "dashboard.log").read_text()
            time.sleep(0.2)
        # A live feed connected during shutdown must not hold the process up.
        with httpx.Client(timeout=30) as client, connect_sse(client, "GET", f"{url}/ui/events") as source:
            next(source.iter_sse())
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            # uvicorn shuts down, then re-raises the signal it caught, so a supervisor sees a SIGTERM exit.
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 15
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    lines = [json.loads(line) for line in (tmp_path / "dashboard.log").read_text().splitlines() if line.startswith("{")]
    assert [line["msg"] for line in lines if line["logger"] == "guardstream.dashboard"] == [
        "dashboard feed started", "dashboard stopped"]
