"""Ordering rules on the real broker and Redis (docs/guarantees.md, "Ordering, gaps and `end`").

- Same input, same outcome: the same deltas arriving live (worker running, deltas sent slowly) and
  as a backlog (all produced before the worker starts) give equal sets of verdicts and DLQ records,
  including a conversation id reused after ``end``, ``end`` after a gap and a gap never filled.
- Durable gaps: a gap held by a worker that stops (or whose Redis state is lost and replayed) is
  still reported at its deadline by the worker that takes the partition over, with no new input.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline.config import Settings
from pipeline.conversations import Conversation, Message
from pipeline.kafka import delete_topics, ensure_topics
from pipeline.scoring.scorer import AFTER_END
from schemas.messages import TokenDelta
from tests.fixtures.stack import consume_all, produce_deltas
from tests.worker.harness import dedup, dlq_records, verdicts, wait_caught_up, wait_until

GAP_MS = 5000
LIMITS = {"gap_timeout_ms": GAP_MS}
REPLY = ("Sure. Bake the bread at two hundred degrees for forty minutes, then let it cool on a rack "
         "before you slice it, or the crumb turns gummy.")


def _messages() -> list[Message]:
    return [Message("user", "How long do I bake a loaf of bread?"), Message("assistant", REPLY)]


def _deltas(cid: str, messages: Sequence[Message], size: int = 6) -> list[TokenDelta]:
    out = []
    for index, message in enumerate(messages):
        pieces = [message.content[i:i + size] for i in range(0, len(message.content), size)] or [""]
        out += [TokenDelta(conversation_id=cid, message_index=index, role=message.role, seq=seq, text=piece,
                           final=seq == len(pieces) - 1) for seq, piece in enumerate(pieces)]
    return out


def _end(cid: str) -> TokenDelta:
    return TokenDelta(conversation_id=cid, type="end")


def scenario(prefix: str) -> list[tuple[list[TokenDelta], bool]]:
    """The input, in parts (a live run waits for the worker between parts), each with whether a live
    run sends it slowly. A gap's fate depends on the log times of its records (see
    docs/guarantees.md), so parts with gaps go out in one burst, as they do in a backlog: their
    records lie within the gap timeout of each other either way.

    ``reused``: a whole conversation, ``end``, then the same id again (all reported, one reason).
    ``gap-end``: message 1 loses seq 3, then ``end`` (6 held deltas and the unfinished message reported).
    ``gap-open``: message 0 loses seq 4, no ``end`` (4 held deltas reported by the gap sweep).
    """
    reused, gapped, open_gap = f"{prefix}-reused", f"{prefix}-gap-end", f"{prefix}-gap-open"
    again = _deltas(reused, _messages())
    gap = _deltas(gapped, _messages())
    never = _deltas(open_gap, _messages())
    return [
        ([*_deltas(reused, _messages()), _end(reused)], True),
        (again[:10], True),
        ([*again[10:], _end(reused)], True),
        ([*gap[:9], *gap[10:16], _end(gapped)], False),
        ([*never[:4], *never[5:9]], False),
    ]


def normalized(settings: Settings, prefix: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    judged = {k.replace(prefix, "P"): str(v).replace(prefix, "P") for k, v in dedup(verdicts(settings)).items()}
    reported = sorted((base64.b64decode(r.original_b64).decode().replace(prefix, "P"), r.reason)
                      for r in dlq_records(settings))
    return judged, reported


def fresh_settings(settings: Settings, tag: str) -> Settings:
    new = settings.replace(topic_in=f"{settings.topic_in}.{tag}", topic_verdicts=f"{settings.topic_verdicts}.{tag}",
                           topic_dlq=f"{settings.topic_dlq}.{tag}", stream_group=f"{settings.stream_group}-{tag}")
    ensure_topics(new)
    return new


def assigned(worker: Any) -> set[int]:
    """Partitions the worker owns now, from its assignment log lines (cooperative: incremental)."""
    owned: set[int] = set()
    for line in worker.log_lines():
        names = line.get("partitions")
        if line.get("msg") not in ("partitions assigned", "partitions revoked") or not isinstance(names, list):
            continue
        numbers = {int(str(n).rsplit("[", 1)[1].rstrip("]")) for n in names}
        owned = owned | numbers if line["msg"] == "partitions assigned" else owned - numbers
    return owned


def wait_reported(settings: Settings, want: int, worker: Any) -> None:
    wait_until(lambda: len(dlq_records(settings)) >= want, 60, f"{want} DLQ records", worker)


def test_live_and_backlog_input_give_the_same_verdicts_and_dlq_records(
    settings: Settings, start_worker: Any,
) -> None:
    live, backlog = fresh_settings(settings, "live"), fresh_settings(settings, "backlog")
    try:
        live_prefix, backlog_prefix = f"L{uuid.uuid4().hex[:8]}", f"B{uuid.uuid4().hex[:8]}"
        parts = scenario(live_prefix)
        reused = len(_deltas("x", _messages()))
        total_reports = reused + 6 + 1 + 4
        # live: the worker judges each part (and each slow delta) as it arrives
        worker = start_worker(live, **LIMITS)
        for part, slowly in parts:
            for batch in ([d] for d in part) if slowly else [part]:
                produce_deltas(live, batch)
                time.sleep(0.02)
            wait_caught_up(live, workers=[worker])
        wait_reported(live, total_reports, worker)
        assert worker.stop() == 0

        # backlog: everything is in the log before the worker starts
        produce_deltas(backlog, [d for part, _ in scenario(backlog_prefix) for d in part])
        worker = start_worker(backlog, **LIMITS)
        wait_caught_up(backlog, workers=[worker])
        wait_reported(backlog, total_reports, worker)
        time.sleep(GAP_MS / 1000 + 1)   # a gap reported twice, or late, would show now
        assert worker.stop() == 0

        live_judged, live_reported = normalized(live, live_prefix)
        backlog_judged, backlog_reported = normalized(backlog, backlog_prefix)
        assert backlog_judged == live_judged
        assert backlog_reported == live_reported
        reasons = [reason for _, reason in live_reported]
        assert reasons.count(AFTER_END) == reused       # every delta after the end; the second end is a no-op
        assert sum(r.startswith("gap at end: message 1 seq") for r in reasons) == 6
        assert sum(r.startswith("unfinished message at end: message 1 ended at seq 2") for r in reasons) == 1
        assert sum(r.startswith("gap: ") for r in reasons) == 4
        assert len(reasons) == total_reports
        finals = sorted(k for k in live_judged if "/final/" in k)
        assert finals == ["P-gap-end/0/stream/final/end", "P-reused/0/stream/final/end",
                          "P-reused/1/stream/final/end"], finals
    finally:
        for s in (live, backlog):
            delete_topics(s, [s.topic_in, s.topic_verdicts, s.topic_dlq])


@pytest.mark.parametrize(("handover", "lose_redis"), [("restart", False), ("restart", True), ("rebalance", False)],
                         ids=["restart", "restart-after-redis-lost-state", "rebalance"])
def test_a_held_gap_is_reported_at_its_deadline_by_the_next_owner(
    settings: Settings, start_worker: Any, redis_client: redis.Redis, tiny_onnx_dir: Path, handover: str,
    lose_redis: bool,
) -> None:
    conv = Conversation(f"{uuid.uuid4().hex[:8]}-held", None, tuple(_messages()))
    deltas = _deltas(conv.conversation_id, conv.messages)
    held = deltas[9:13]
    gap_ms = 8000                                  # room to stop the first worker before the deadline
    worker = start_worker(settings, gap_timeout_ms=gap_ms)
    worker.wait_for_log("partitions assigned")
    if handover == "rebalance":   # two running workers; the holder of the gap leaves, its partitions move
        other = start_worker(settings, gap_timeout_ms=gap_ms)
        other.wait_for_log("partitions assigned")
        wait_until(lambda: len(assigned(worker)) + len(assigned(other)) == settings.partitions, 60, "the rebalance")
    first_seen_ms = int(time.time() * 1000)
    produce_deltas(settings, deltas[:8] + held)   # message 1 seq 2 never comes
    wait_caught_up(settings, workers=[worker])
    if handover == "rebalance":
        [partition] = {r.partition for r in consume_all(settings, settings.topic_in)}
        if partition in assigned(other):
            worker, other = other, worker
        successor = other
    assert worker.stop() == 0
    assert dlq_records(settings) == [], "reported before its deadline; make gap_ms longer"
    if lose_redis:                                 # the next owner rebuilds the held set by replay
        lost = [*redis_client.scan_iter(match=f"gs:*{settings.stream_group}*"),
                *redis_client.scan_iter(match=f"gs:*:{conv.conversation_id}")]
        assert len(lost) >= 3, lost                # watermark, held index, state
        redis_client.delete(*lost)
    if handover == "restart":
        successor = start_worker(settings, gap_timeout_ms=gap_ms)
    wait_until(lambda: len(dlq_records(settings)) >= len(held), 60, "the gap report", successor)
    time.sleep(2)
    records = dlq_records(settings)
    assert len(records) == len(held), [r.reason for r in records]   # each held delta once
    assert sorted(r.source_offset for r in records) == list(range(8, 12))
    assert all(r.reason.startswith("gap: message 1 seq") and "for message 1 seq 2" in r.reason for r in records)
    assert all(r.ts_ms >= first_seen_ms + gap_ms for r in records)
    assert [v.message_index for v in verdicts(settings) if v.kind == "final"] == [0]   # message 1 never ends
    if lose_redis:
        assert successor.logged("replaying partition to rebuild state") > 0
    assert successor.stop() == 0
