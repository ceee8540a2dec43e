"""A new generative group starts at --gen-start-from: latest (default) skips what guard.in already held."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.kafka import delete_topics
from schemas.messages import TokenDelta
from tests.fixtures.stack import consume_verdicts, produce_deltas
from tests.gen.test_worker_kafka import WorkerProcess
from workers.generative.app import TABLE_NAME

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def gen_settings(settings: Settings, gen_checkpoint: Path) -> Iterator[Settings]:
    gen = settings.replace(model=str(gen_checkpoint), max_context_tokens=1024, gen_max_batch=4)
    yield gen
    group = gen.generative_group
    delete_topics(gen, [f"{group}-{TABLE_NAME}-changelog", f"{group}-__assignor-__leader"])


def _message(cid: str) -> TokenDelta:
    return TokenDelta(conversation_id=cid, message_index=0, role="user", seq=0, text="is this fine?", final=True)


def test_a_new_group_rules_only_conversations_sent_after_it_started(gen_settings: Settings, tmp_path: Path) -> None:
    produce_deltas(gen_settings, [_message(f"old-{i}") for i in range(4)])
    worker = WorkerProcess(gen_settings, tmp_path / "gen.log", start_from=None)   # the default
    try:
        worker.wait_ready()
        time.sleep(3)   # the group has joined and taken its start offsets
        produce_deltas(gen_settings, [_message("new-0")])
        deadline = time.monotonic() + 300
        seen: set[str] = set()
        while "new-0" not in seen and time.monotonic() < deadline:
            seen = {v.conversation_id for v in consume_verdicts(gen_settings, timeout_s=20)}
            time.sleep(2)
        assert "new-0" in seen
        time.sleep(3)
        seen = {v.conversation_id for v in consume_verdicts(gen_settings, timeout_s=20)}
        assert not any(cid.startswith("old-") for cid in seen), seen
    finally:
        worker.close()
