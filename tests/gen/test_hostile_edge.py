"""The generative worker refuses the hostile corpus's bad records like the stream worker does (one
edge function, pipeline.intake.accept): each lands in the DLQ once, with a reason of its class, in
a record that fits; the worker stays up and still rules good input."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import msgspec
import pytest

from pipeline.config import Settings
from pipeline.dlq import LABELS, reason_class
from schemas.messages import MAX_REASON_CHARS, DlqRecord, TokenDelta
from tests.fixtures.stack import consume_all, consume_verdicts, produce, produce_deltas
from tests.gen.test_worker_kafka import WorkerProcess
from tests.hostile.corpus import hostile_corpus

pytestmark = pytest.mark.timeout(900)


def test_every_bad_record_of_the_corpus_reaches_the_dlq_and_good_input_is_still_ruled(
    gen_settings: Settings, tmp_path: Path,
) -> None:
    prefix = uuid.uuid4().hex[:8]
    corpus = hostile_corpus(prefix, group=gen_settings.generative_group, topic=gen_settings.topic_in,
                            max_conversation_messages=gen_settings.max_conversation_messages,
                            max_held_deltas=gen_settings.max_held_deltas, scale=0.001)
    # Held (out-of-order) deltas are the stream worker's limit; the generative worker assembles them.
    bad = [b for b in corpus.bad if b.cls != "held deltas limit"]
    produce(gen_settings, gen_settings.topic_in, [(b.key, b.value) for b in bad])  # type: ignore[misc]
    cid = f"{prefix}-good"
    produce_deltas(gen_settings, [
        TokenDelta(conversation_id=cid, message_index=0, role="user", seq=0, text="a fine question", final=True)])
    worker = WorkerProcess(gen_settings, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        ruled = [v for v in consume_verdicts(gen_settings, n=1, timeout_s=300) if v.conversation_id == cid]
        assert ruled, "the good message after the bad records was not ruled"
        records = [msgspec.json.decode(r.value or b"", type=DlqRecord)
                   for r in consume_all(gen_settings, gen_settings.topic_dlq, n=len(bad), timeout_s=120)]
        assert worker.get("/healthz")[0] == 200
        status, metrics = worker.get("/metrics")
        assert worker.terminate() == 0
    finally:
        worker.close()
    assert len(records) == len(bad)
    for record in records:
        assert len(record.reason) <= MAX_REASON_CHARS and reason_class(record.reason) in LABELS
    by_digest: dict[str | None, list[DlqRecord]] = {}
    for record in records:
        by_digest.setdefault(record.original_sha256, []).append(record)
    for b in bad:
        matching = by_digest.get(hashlib.sha256(b.value or b"").hexdigest(), [])
        assert matching, f"{b.cls}: no DLQ record"
        assert any(reason_class(r.reason) in b.reasons for r in matching), (b.cls, [r.reason for r in matching])
    oversized = [r for r in records if r.reason.startswith("oversized text")]
    assert oversized and oversized[0].original_truncated and (oversized[0].original_length or 0) > 600_000
    assert status == 200
    labels = {line.split('kind="')[1].split('"')[0] for line in metrics.splitlines()
              if line.startswith("guardstream_gen_dlq_total{")}
    assert labels and labels <= set(LABELS)
