"""One stream worker, never restarted, takes the whole hostile corpus mixed into normal traffic:
normal conversations get the offline reference's verdicts, every bad record is in the DLQ with a
bounded reason of its class, the worker stays alive and its memory bounded."""

from __future__ import annotations

import hashlib
import os
import random
import re
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgspec

from pipeline.config import Settings
from pipeline.conversations import Conversation
from pipeline.deltas import interleave
from pipeline.dlq import LABELS, MAX_KEY_CHARS, reason_class
from schemas.messages import MAX_REASON_CHARS, DlqRecord, Verdict, encode
from tests.fixtures.stack import consume_all, produce
from tests.hostile.corpus import BadRecord, hostile_corpus, produced
from tests.worker.conftest import chunked_deltas, expected_verdicts, renamed
from tests.worker.harness import assert_same_verdicts, dedup, dlq_records, verdicts, wait_caught_up, wait_until

LIMITS = {"max_conversation_messages": 64, "max_held_deltas": 10, "gap_timeout_ms": 2000}
# 0.03: 300 conversations of one tenant and a 3,000-delta message (the CI size); 1.0: 10k and 100k.
SCALE = float(os.environ.get("GUARDSTREAM_HOSTILE_SCALE", "0.03"))
RSS_LIMIT_BYTES = 1536 * 1024 * 1024


def dlq_of(bad: BadRecord, dlq: list[DlqRecord]) -> list[DlqRecord]:
    """The DLQ records of one bad record: same original (SHA-256) and key (as far as the DLQ shows it)."""
    digest = hashlib.sha256(bad.value or b"").hexdigest()
    key = None if bad.key is None else bad.key.decode("utf-8", "backslashreplace")
    return [r for r in dlq if r.original_sha256 == digest
            and (r.original_key == key or (key is not None and len(key) > MAX_KEY_CHARS
                                           and r.original_key is not None and key.startswith(r.original_key[:400])))]


def unmatched(bad: list[BadRecord], dlq: list[DlqRecord]) -> list[str]:
    return [b.cls for b in bad if len(dlq_of(b, dlq)) != 1]


def rss_bytes(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def tenant_scoped(verdict: Verdict) -> Verdict:
    """verdict_id names no tenant; two tenants may use one conversation id (the corpus does)."""
    return msgspec.structs.replace(verdict, verdict_id=f"{verdict.tenant}|{verdict.verdict_id}")


def metrics_text(worker: Any) -> str:
    port = next(int(line["port"]) for line in worker.log_lines() if line.get("msg") == "ops server listening")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def test_one_worker_survives_the_hostile_corpus_and_judges_normal_traffic_like_the_reference(
    settings: Settings, start_worker: Any, tiny_onnx_dir: Path, sample_conversations: list[Conversation],
) -> None:
    settings = settings.replace(**LIMITS)
    prefix = uuid.uuid4().hex[:8]
    corpus = hostile_corpus(prefix, group=settings.stream_group, topic=settings.topic_in, scale=SCALE,
                            max_conversation_messages=64, max_held_deltas=10)
    assert len(corpus.classes) >= 20
    normal = chunked_deltas(renamed(sample_conversations, copies=2), seed=11)
    judged = [*normal, *corpus.valid]
    expected = dedup(map(tenant_scoped, expected_verdicts(settings, tiny_onnx_dir, judged)))

    worker = start_worker(settings, metrics_port=_free_port())
    worker.wait_for_log("stream worker consuming", timeout_s=120)
    assert worker.proc is not None
    before = rss_bytes(worker.proc.pid)

    # Hostile records land at random places of the normal stream; each stream keeps its own order.
    streams = [[(d.conversation_id.encode(), encode(d)) for d in normal], produced(corpus)]
    records = list(interleave(streams, "random", random.Random(5)))
    produce(settings, settings.topic_in, records)  # type: ignore[arg-type]

    wait_caught_up(settings, timeout_s=300, workers=[worker])
    wait_until(lambda: not unmatched(corpus.bad, dlq_records(settings)), 60, "every bad record in the DLQ", worker)
    assert worker.alive()
    after = rss_bytes(worker.proc.pid)

    # Normal and absurd-but-valid conversations: the reference's verdicts, nothing more, nothing less.
    found = [v for v in verdicts(settings) if not v.conversation_id.startswith(f"{prefix}-held")]
    assert_same_verdicts(dedup(map(tenant_scoped, found)), expected)

    # Every bad record: one DLQ record, found by its original's SHA-256 and key, reason of its class,
    # pointing at its offset in the input topic.
    offsets = {(r.key, hashlib.sha256(r.value or b"").hexdigest()): r.offset
               for r in consume_all(settings, settings.topic_in)}
    dlq = dlq_records(settings)
    for rec in dlq:
        assert len(rec.reason) <= MAX_REASON_CHARS
        assert reason_class(rec.reason) in LABELS
    for bad in corpus.bad:
        [rec] = dlq_of(bad, dlq)
        assert reason_class(rec.reason) in bad.reasons, (bad.cls, rec.reason)
        assert rec.original_length == len(bad.value or b"")
        assert rec.source_offset == offsets[(bad.key, hashlib.sha256(bad.value or b"").hexdigest())]
    oversized = [r for r in dlq if r.reason.startswith("oversized text")]
    assert oversized and oversized[0].original_truncated and oversized[0].original_length > 600_000
    judged_ids = {d.conversation_id for d in judged}
    assert not [r.reason for r in dlq if r.conversation_id in judged_ids and "model context" not in r.reason]

    exposition = metrics_text(worker)
    labels = set(re.findall(r'guardstream_stream_dlq_total\{reason="([^"]*)"\}', exposition))
    assert labels and labels <= set(LABELS)
    log_text = worker.log_path.read_text(errors="replace")
    assert "OverflowError" not in log_text and "Traceback" not in log_text
    assert max(len(line) for line in log_text.splitlines()) < 4096, "a log line quotes unbounded input"
    print(f"worker RSS before {before['VmRSS'] >> 20} MiB, after {after['VmRSS'] >> 20} MiB, "
          f"peak {after['VmHWM'] >> 20} MiB; {len(records)} records, {len(corpus.bad)} bad")
    assert after["VmHWM"] < RSS_LIMIT_BYTES
    assert worker.stop() == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
