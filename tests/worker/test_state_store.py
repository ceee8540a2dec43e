"""The Redis state store's fence: a partition's states move only from the watermark the writer expects."""

from __future__ import annotations

import uuid

import redis

from pipeline.state.store import NO_WATERMARK, PartitionWrite, StateStore, WriteConflict


def test_writes_advance_the_watermark_only_from_the_expected_one(redis_client: redis.Redis) -> None:
    store = StateStore(redis_client, f"store-{uuid.uuid4().hex[:8]}", ttl_s=60)
    key = f"gs:-:{uuid.uuid4().hex}"
    assert store.watermarks("in", [0]) == {0: NO_WATERMARK}
    assert store.write([PartitionWrite("in", 0, NO_WATERMARK, 4, {key: b"v1"})]) == []
    # A writer that still believes nothing was written (stale picture) is refused, and nothing changes.
    assert store.write([PartitionWrite("in", 0, NO_WATERMARK, 9, {key: b"stale"})]) == [
        WriteConflict("in", 0, NO_WATERMARK, 4)]
    assert store.load([key]) == {key: b"v1"}
    states, marks = store.load_with_watermarks([key], "in", [0])
    assert (states, marks) == ({key: b"v1"}, {0: 4})
    assert 0 < int(redis_client.ttl(key)) <= 60
    assert store.write([PartitionWrite("in", 0, 4, 7, deleted={key})]) == []
    assert store.load([key]) == {} and store.watermarks("in", [0]) == {0: 7}


def test_partitions_are_fenced_independently_in_one_round_trip(redis_client: redis.Redis) -> None:
    store = StateStore(redis_client, f"store-{uuid.uuid4().hex[:8]}", ttl_s=60)
    a, b = (f"gs:-:{uuid.uuid4().hex}" for _ in range(2))
    conflicts = store.write([PartitionWrite("in", 0, NO_WATERMARK, 1, {a: b"a"}),
                             PartitionWrite("in", 1, 5, 6, {b: b"b"})])
    assert conflicts == [WriteConflict("in", 1, 5, NO_WATERMARK)]
    assert store.load([a, b]) == {a: b"a"}
