"""A delta is keyed by its conversation and so always lands on the same partition."""

from __future__ import annotations

from pipeline.config import Settings
from schemas.messages import TokenDelta, decode_delta
from tests.fixtures.stack import consume_all, produce_deltas


def _deltas(conversation_id: str, count: int) -> list[TokenDelta]:
    return [TokenDelta(conversation_id=conversation_id, message_index=0, role="user", seq=i, text=f"w{i} ")
            for i in range(count)]


def test_deltas_of_one_conversation_share_one_partition_in_order(settings: Settings) -> None:
    conversations = [f"conv-{i}" for i in range(12)]
    produce_deltas(settings, [d for c in conversations for d in _deltas(c, 5)])
    records = consume_all(settings, settings.topic_in, n=60)
    assert len(records) == 60
    partitions: dict[str, set[int]] = {}
    seqs: dict[str, list[int]] = {}
    for record in records:
        assert record.value is not None
        delta = decode_delta(record.value)
        assert record.key == delta.conversation_id.encode()
        partitions.setdefault(delta.conversation_id, set()).add(record.partition)
        seqs.setdefault(delta.conversation_id, []).append(delta.seq or 0)
    assert all(len(p) == 1 for p in partitions.values())
    assert all(s == list(range(5)) for s in seqs.values())
    # Twelve keys over several partitions: the key, not chance, spreads them.
    assert len({p for ps in partitions.values() for p in ps}) > 1


def test_a_conversation_maps_to_the_same_partition_across_producers(settings: Settings) -> None:
    produce_deltas(settings, _deltas("stable-key", 1))
    produce_deltas(settings, _deltas("stable-key", 1))
    records = consume_all(settings, settings.topic_in, n=2)
    assert len(records) == 2
    assert records[0].partition == records[1].partition
