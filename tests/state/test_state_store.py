"""The Redis state store's fence: a partition's states move only from the watermark the writer expects."""

from __future__ import annotations

import logging
import uuid

import pytest
import redis

from pipeline.state.keys import conversation_key, watermark_key
from pipeline.state.store import NO_WATERMARK, PartitionWrite, StateStore, WriteConflict


def test_writes_advance_the_watermark_only_from_the_expected_one(redis_client: redis.Redis) -> None:
    store = StateStore(redis_client, f"store-{uuid.uuid4().hex[:8]}", ttl_s=60)
    key = conversation_key(None, uuid.uuid4().hex)
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
    a, b = (conversation_key(None, uuid.uuid4().hex) for _ in range(2))
    conflicts = store.write([PartitionWrite("in", 0, NO_WATERMARK, 1, {a: b"a"}),
                             PartitionWrite("in", 1, 5, 6, {b: b"b"})])
    assert conflicts == [WriteConflict("in", 1, 5, NO_WATERMARK)]
    assert store.load([a, b]) == {a: b"a"}


def test_a_corrupt_watermark_counts_as_none_is_reported_once_and_is_replaced_by_the_next_write(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    group = f"store-{uuid.uuid4().hex[:8]}"
    store = StateStore(redis_client, group, ttl_s=60)
    for garbage in (b"\x93\xa3not-a-number", b"-7", b"1e400", b" 5", b"9" * 30):
        key = conversation_key("wm", f"{group}:in:0:{garbage!r}")
        redis_client.set(watermark_key(group, "in", 0), garbage)
        with caplog.at_level(logging.ERROR, logger="guardstream.state"):
            assert store.watermarks("in", [0]) == {0: NO_WATERMARK}
            assert store.load_with_watermarks([key], "in", [0]) == ({}, {0: NO_WATERMARK})
        # The fenced write treats it as "no watermark" too: recovery (expecting none) replaces it.
        assert store.write([PartitionWrite("in", 0, 5, 9, {key: b"x"})]) == [WriteConflict("in", 0, 5, NO_WATERMARK)]
        assert store.write([PartitionWrite("in", 0, NO_WATERMARK, 9, {key: b"v"})]) == []
        assert store.watermarks("in", [0]) == {0: 9}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "unreadable watermark" in errors[0].getMessage()
