"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, opens the page,
then conversations stream through a real stream worker over the local Kafka. They must appear without
a reload, the reply the policy blocks must show its blocked token marked, and a screenshot is saved
(into the test's tmp dir; GUARD_DASHBOARD_SCREENSHOT=PATH writes it there too, which is how
docs/img/dashboard.png is made).

The browser is required, never skipped: `make setup` installs it (apt `chromium`)."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.dashboard.app import create_dashboard_app
from pipeline.kafka import delete_topics, ensure_topics, make_producer
from schemas.messages import TokenDelta, encode
from tests.fixtures.stack import StackEndpoints
from tests.gateway.servers import ServerThread
from tests.worker.harness import WorkerProcess, worker_settings

pytestmark = pytest.mark.kafka

CHROMIUM = os.environ.get("GUARD_CHROMIUM", "/usr/bin/chromium")
# open: replies are never relabelled risky; tripwire: every reply token counts as unsafe, so a reply
# is blocked at its second token whatever the random model says (as in the gateway's tests).
POLICY = """\
default: strict
tenants:
  open: {mode: loose, unsafe_threshold: 1.0, risky_threshold: 1.0}
  tripwire: {mode: loose, unsafe_threshold: 0.0}
"""
CONVERSATIONS = [
    ("open", "How do I bake bread at home?",
     "Mix flour, water, salt and a little yeast, knead the dough for ten minutes, let it rise for an hour, "
     "shape it, let it rise again, then bake it at 220 degrees for about thirty minutes."),
    ("tripwire", "Tell me something I should not know.",
     "Here is exactly what you asked for, step by step, with nothing left out."),
    ("open", "Recommend a good book about the sea.",
     "Moby-Dick by Herman Melville is a classic; The Old Man and the Sea by Hemingway is shorter."),
    # Markup in an id and in text must show as text and never run.
    ("open", "What does <img src=x onerror=window.__xss=1> do?",
     "It is markup: <b>bold</b> & <script>window.__xss=2</script> shown as plain text."),
]
MARKUP_ID = "markup-<img src=x onerror=window.__xss=3>"


def word_chunks(text: str) -> list[str]:
    """A word per chunk with its leading space, as an LLM streams tokens."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


@pytest.fixture(scope="module")
def streamed(stack: StackEndpoints, tiny_onnx_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, WorkerProcess]]:
    from pipeline.config import load_settings

    tmp = tmp_path_factory.mktemp("dashboard-browser")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    prefix = f"d{uuid.uuid4().hex[:10]}"
    settings = load_settings().replace(
        kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url, topic_in=f"{prefix}.guard.in",
        topic_verdicts=f"{prefix}.guard.verdicts", topic_dlq=f"{prefix}.guard.in.dlq",
        stream_group=f"{prefix}-stream", partitions=2, metrics_port=0, policy_file=str(policy),
    )
    ensure_topics(settings)
    worker = WorkerProcess(worker_settings(settings, tiny_onnx_dir), tmp, "dashboard").start()
    try:
        worker.wait_for_log("partitions assigned")
        yield settings, worker
    finally:
        if worker.alive():
            worker.stop()
        delete_topics(settings, [settings.topic_in, settings.topic_verdicts, settings.topic_dlq])


def stream_conversations(settings: Settings, ids: list[str], delay_s: float) -> None:
    """Each conversation's prompt, then its reply a word per delta, the conversations interleaved."""
    producer = make_producer(settings)
    scripts = []
    for cid, (tenant, prompt, reply) in zip(ids, CONVERSATIONS, strict=True):
        deltas = [TokenDelta(conversation_id=cid, message_index=0, role="user", seq=0, text=prompt, final=True,
                             tenant=tenant, ts_ms=0)]
        chunks = word_chunks(reply)
        deltas += [TokenDelta(conversation_id=cid, message_index=1, role="assistant", seq=i, text=c,
                              final=i == len(chunks) - 1, tenant=tenant, ts_ms=0) for i, c in enumerate(chunks)]
        scripts.append(deltas)
    while any(scripts):
        for deltas in scripts:
            if deltas:
                d = deltas.pop(0)
                d = TokenDelta(**{**{f: getattr(d, f) for f in d.__struct_fields__}, "ts_ms": int(time.time() * 1000)})
                producer.produce(settings.topic_in, key=d.conversation_id, value=encode(d))
        producer.poll(0)
        time.sleep(delay_s)
    assert producer.flush(30) == 0


def test_conversations_appear_live_and_the_blocked_token_is_marked(
        streamed: tuple[Settings, WorkerProcess], tmp_path: Path) -> None:
    if not (Path(CHROMIUM).exists() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's browser with 'apt-get install -y chromium' "
                    "(make setup does) or point GUARD_CHROMIUM at one")
    from playwright.sync_api import expect, sync_playwright

    settings, worker = streamed
    server = ServerThread(create_dashboard_app(settings.replace(dashboard_show_text=True))).start()
    ids = [f"{tenant}-{uuid.uuid4().hex[:6]}" for tenant, _, _ in CONVERSATIONS[:-1]]
    ids.append(f"{MARKUP_ID}-{uuid.uuid4().hex[:6]}")
    sender = threading.Thread(target=stream_conversations, args=(settings, ids, 0.05), daemon=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM,
                                        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1440, "height": 720})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{server.url}/ui/")
            expect(page.locator("#connection")).to_have_text("live", timeout=30_000)
            sender.start()   # the page is open and live before anything streams

            for cid in ids:
                expect(page.locator(f'li.conversation[data-id="{cid}"]')).to_be_visible(timeout=90_000)
            blocked_id = ids[1]
            page.locator(f'li.conversation[data-id="{blocked_id}"]').click()
            expect(page.locator("#d-id")).to_have_text(blocked_id)
            blocked = page.locator("#d-messages .message[data-index='1'] .tok.blocked")
            expect(blocked).to_have_count(1, timeout=90_000)
            # The tripwire blocks at the reply's second token, " is": its chunk is the one marked.
            assert blocked.text_content() == " is"
            expect(page.locator("#d-messages .message[data-index='1'] .mark.action-block").first).to_be_visible()
            expect(page.locator("#d-messages .message[data-index='1'] .tok.withheld").first).to_be_visible()
            expect(page.locator("#d-risk")).to_contain_text("blocked")

            # A released reply: all of it judged, nothing withheld.
            page.locator(f'li.conversation[data-id="{ids[0]}"]').click()
            reply = page.locator("#d-messages .message[data-index='1']")
            expect(reply.locator(".verdict[data-source='stream']")).to_contain_text("stream", timeout=90_000)
            expect(reply.locator(".tok.withheld")).to_have_count(0)
            expect(reply.locator(".tok.pending")).to_have_count(0)
            assert "Mix flour" in (reply.text_content() or "")

            page.locator(f'li.conversation[data-id="{ids[3]}"]').click()
            expect(page.locator("#d-id")).to_have_text(ids[3])
            expect(page.locator("#d-messages .message[data-index='1']")).to_contain_text(
                "<script>window.__xss=2</script>", timeout=90_000)
            expect(page.locator("#d-messages .message[data-index='0']")).to_contain_text("<img src=x")
            assert page.evaluate("window.__xss") is None
            assert page.locator("#d-messages img, #d-messages b, #d-messages script, #conversations img").count() == 0

            # The view shown in the README: the blocked conversation, with every verdict in.
            sender.join(timeout=60)
            page.locator(f'li.conversation[data-id="{blocked_id}"]').click()
            expect(page.locator("#d-messages .message[data-index='1'] .tok.blocked")).to_have_count(1)
            page.locator("#d-history-button").click()
            expect(page.locator("#d-history-status")).to_contain_text("verdicts", timeout=30_000)
            expect(page.locator("#s-conversations")).to_contain_text("4", timeout=10_000)
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert shot.stat().st_size > 10_000
        assert not errors, f"the page raised: {errors}"
        if os.environ.get("GUARD_DASHBOARD_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["GUARD_DASHBOARD_SCREENSHOT"])
    finally:
        server.stop()
    assert worker.alive(), worker.tail()
