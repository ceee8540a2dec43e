"""A batch that finds Redis behind (or ahead of) the watermark its caller expects is not judged: the
processor says which partitions need recovery, and the same batch judged after recovery gives the
verdicts it would have given. Real Redis, the hash engine."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import redis

from pipeline.scoring.scorer import Scorer
from pipeline.state.store import NO_WATERMARK, StateStore
from schemas.messages import Verdict, encode
from tests.scoring.drive import content, conversation_deltas
from tests.scoring.hash_engine import HashEngine
from tests.scoring.test_scorer import FOLLOW_UP
from workers.stream.processing import BatchOutcome, BatchProcessor, StalePartitions
from workers.stream.records import InputRecord

TOPIC = "guard.in"


def test_a_stale_watermark_judges_nothing_and_names_the_partition(
    make_scorer: Callable[..., Scorer], redis_client: redis.Redis,
) -> None:
    prefix = uuid.uuid4().hex[:8]
    deltas = conversation_deltas(f"stale-{prefix}", FOLLOW_UP, 7)
    records = [InputRecord(TOPIC, 0, i, d.conversation_id.encode(), encode(d), 1_000 + i)
               for i, d in enumerate(deltas)]
    half = len(records) // 2
    store = StateStore(redis_client, f"stale-{prefix}", 300)
    processor = BatchProcessor(make_scorer(), HashEngine(bias=(1.0, 0.3, 0.6)), store, "w", 65536, 30_000)

    first = processor.process(records[:half], {(TOPIC, 0): NO_WATERMARK}, 5_000)
    assert isinstance(first, BatchOutcome)
    assert store.write(first.writes) == []
    stored = first.writes[0].new_watermark

    # The caller still believes Redis holds nothing (it lost track, or Redis moved on without it).
    stale = processor.process(records[half:], {(TOPIC, 0): NO_WATERMARK}, 5_000)
    assert stale == StalePartitions({(TOPIC, 0): stored})
    assert store.watermarks(TOPIC, [0])[0] == stored   # nothing written, nothing judged

    second = processor.process(records[half:], {(TOPIC, 0): stored}, 5_000)
    assert isinstance(second, BatchOutcome)
    assert any(v.kind == "final" for v in second.verdicts)
    # The same conversation (under another id: states are keyed by it) judged in one batch.
    other = [InputRecord(TOPIC, 0, i, d.conversation_id.encode(), encode(d), 1_000 + i)
             for i, d in enumerate(conversation_deltas(f"whole-{prefix}", FOLLOW_UP, 7))]
    whole = BatchProcessor(make_scorer(), HashEngine(bias=(1.0, 0.3, 0.6)), StateStore(
        redis_client, f"whole-{prefix}", 300), "w", 65536, 30_000).process(other, {}, 5_000)
    assert isinstance(whole, BatchOutcome)

    def judged(verdicts: list[Verdict]) -> list[dict[str, object]]:
        found = (content(v, drop=("verdict_id", "conversation_id")) for v in verdicts)
        return sorted(found, key=lambda c: (c["message_index"], c["kind"], c["token_index"] or 0))

    assert judged(first.verdicts + second.verdicts) == judged(whole.verdicts)
