"""Same input, same outcome: however the input log is cut into micro-batches (and whatever Redis
writes are lost and replayed), the batch processor gives one set of verdicts and DLQ records.

The input mixes the cases whose outcome used to depend on batching or on the worker's clock:
a conversation id reused after ``end``, gaps filled in time, gaps filled too late, gaps never
filled, ``end`` after a gap. Real Redis (the fenced writes and the durable held-gap index), the
hash engine for speed.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
import redis

from pipeline.scoring.scorer import Scorer
from pipeline.state.store import NO_WATERMARK, PartitionWrite, StateStore
from schemas.messages import TokenDelta, encode
from tests.scoring.drive import content, conversation_deltas
from tests.scoring.hash_engine import HashEngine
from tests.scoring.test_scorer import FOLLOW_UP, SAMPLES
from workers.stream.live_states import LiveStates
from workers.stream.processing import BatchOutcome, BatchProcessor, ConversationRef
from workers.stream.records import InputRecord

GAP_MS = 1_000
TOPIC = "same-outcome.in"
FAR_FUTURE_MS = 10**15


@dataclass(frozen=True)
class Script:
    """One input log: deltas with their log times (Kafka timestamps)."""

    deltas: list[TokenDelta]
    times: list[int]


def _renamed(deltas: Sequence[TokenDelta], cid: str) -> list[TokenDelta]:
    return [TokenDelta(**{**{f: getattr(d, f) for f in d.__struct_fields__}, "conversation_id": cid}) for d in deltas]


def _end(cid: str) -> TokenDelta:
    return TokenDelta(conversation_id=cid, type="end")


def build_script(seed: int) -> Script:
    rng = random.Random(seed)
    convs = [list(c.messages) for c in SAMPLES[:3]] + [FOLLOW_UP]
    streams: list[list[TokenDelta]] = []
    late: list[TokenDelta] = []
    for n, messages in enumerate(convs):
        deltas = conversation_deltas(f"c{n}", messages, rng=rng)
        kind = n % 4
        if kind == 0:    # the id reused after end (twice over)
            again = _renamed(conversation_deltas("x", messages[:2], rng=rng), f"c{n}")
            streams.append([*deltas, _end(f"c{n}"), *again, _end(f"c{n}"), *again[:2]])
        elif kind == 1:  # a gap filled later (in time or too late, depending on the log times)
            gap = rng.randrange(1, len(deltas))
            late.append(deltas.pop(gap))
            streams.append([*deltas, _end(f"c{n}")] if rng.random() < 0.5 else deltas)
        elif kind == 2:  # a gap inside a message, never filled, then end: the message stays unfinished
            del deltas[rng.choice([i for i, d in enumerate(deltas[:-1]) if d.seq])]
            streams.append([*deltas, _end(f"c{n}")])
        else:            # a gap never filled, no end: only a sweep reports it
            del deltas[rng.randrange(1, len(deltas) - 1)]
            streams.append(deltas)
    order: list[TokenDelta] = []
    cursors = [0] * len(streams)
    while any(c < len(s) for c, s in zip(cursors, streams, strict=True)):
        i = rng.choice([i for i, s in enumerate(streams) if cursors[i] < len(s)])
        order.append(streams[i][cursors[i]])
        cursors[i] += 1
        if late and rng.random() < 0.08:
            order.append(late.pop())
    order += late
    times, t = [], 1_000_000
    for _ in order:
        t += 2 * GAP_MS if rng.random() < 0.06 else rng.choice([0, 1, 5, 20])
        times.append(t)
    return Script(order, times)


def records_of(script: Script, prefix: str) -> list[InputRecord]:
    out = []
    for offset, (delta, t) in enumerate(zip(script.deltas, script.times, strict=True)):
        d = _renamed([delta], f"{prefix}-{delta.conversation_id}")[0]
        out.append(InputRecord(TOPIC, 0, offset, d.conversation_id.encode(), encode(d), t))
    return out


def cuts(n: int, rng: random.Random, max_batch: int) -> Iterator[tuple[int, int]]:
    start = 0
    while start < n:
        size = rng.randint(1, max_batch)
        yield start, min(n, start + size)
        start += size


Outcome = tuple[frozenset[str], frozenset[tuple[int, str]]]


def run(scorer: Scorer, client: redis.Redis, script: Script, batching: random.Random, max_batch: int,
        lose_writes: float, live: bool = False) -> Outcome:
    """Feed the log in random batches (each at most ``max_batch``); with probability ``lose_writes`` a
    batch's Redis write is lost after its outputs committed and the batch is replayed (output
    suppressed), as recovery does. At the end, a sweep as a caught-up worker would run one.

    ``live``: a worker that keeps up, so it is caught up after every batch and sweeps held gaps by
    its wall clock at some moment before the next record is appended.
    """
    prefix = uuid.uuid4().hex[:8]
    records = records_of(script, prefix)
    store = StateStore(client, f"same-outcome-{prefix}", 300)
    processor = BatchProcessor(scorer, HashEngine(bias=(1.0, 0.3, 0.6)), store, "w", 65536, GAP_MS)
    watermark = NO_WATERMARK
    verdicts, dlq = [], []
    for start, stop in cuts(len(records), batching, max_batch):
        batch = records[start:stop]
        wall = batch[-1].timestamp_ms or 0   # a live worker's clock: no gap sweep here (not caught up)
        out = processor.process(batch, {(TOPIC, 0): watermark}, wall)
        verdicts += out.verdicts
        dlq += out.dlq
        if batching.random() < lose_writes:
            out = processor.process(batch, {(TOPIC, 0): watermark}, wall + 5, expire_gaps=False)
        assert store.write(out.writes) == []
        watermark = out.writes[0].new_watermark
        if live and stop < len(records):
            wall = batching.randint(wall, max(wall, (records[stop].timestamp_ms or 0) - 1))
            out = processor.process([], {(TOPIC, 0): watermark}, wall, processor.held_conversations(TOPIC, 0))
            verdicts += out.verdicts
            dlq += out.dlq
            assert store.write(out.writes) == []
    sweep = processor.held_conversations(TOPIC, 0)
    out = processor.process([], {(TOPIC, 0): watermark}, FAR_FUTURE_MS, sweep)
    verdicts += out.verdicts
    dlq += out.dlq
    assert store.write(out.writes) == []
    assert processor.held_conversations(TOPIC, 0) == {}, "the held index names conversations that hold nothing"
    judged = frozenset(str(content(v)).replace(f"{prefix}-", "") for v in verdicts)
    reported = frozenset((r.source_offset, r.reason) for r in dlq)
    assert len(judged) == len(verdicts), "a verdict was published twice"
    return judged, reported


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_batching_and_lost_writes_give_one_set_of_verdicts_and_dlq_records(
    make_scorer: Callable[..., Scorer], redis_client: redis.Redis, seed: int,
) -> None:
    script = build_script(seed)
    scorer = make_scorer(progress_every_tokens=8)
    judged, reported = run(scorer, redis_client, script, random.Random(0), 1, 0.0, live=True)
    reasons = {reason.split(":")[0] for _, reason in reported}
    assert {"delta after the conversation's end", "gap"} <= reasons, reasons   # the cases are exercised
    assert any(r.startswith("gap at end") for r in reasons) and any(r.startswith("unfinished") for r in reasons)
    rng = random.Random(seed)
    for max_batch, live in ((1, False), (2, True), (7, False), (40, True), (len(script.deltas), False)):
        other = run(scorer, redis_client, script, random.Random(rng.random()), max_batch, 0.3, live)
        assert other[0] == judged, f"verdicts differ with batches of at most {max_batch} (live: {live})"
        assert sorted(other[1]) == sorted(reported), f"DLQ differs with batches of at most {max_batch} (live: {live})"


def run_overlapped(scorer: Scorer, client: redis.Redis, script: Script, batching: random.Random, max_batch: int,
                   capacity: int) -> Outcome:
    """As the stream worker with overlapped commits: each batch is judged on the states the previous one
    left in memory (at most ``capacity`` besides the newest batch's), before that one's Redis write lands."""
    prefix = uuid.uuid4().hex[:8]
    records = records_of(script, prefix)
    store = StateStore(client, f"same-outcome-{prefix}", 300)
    processor = BatchProcessor(scorer, HashEngine(bias=(1.0, 0.3, 0.6)), store, "w", 65536, GAP_MS)
    live = LiveStates(capacity, max_age_s=3600)
    written = NO_WATERMARK           # what Redis holds
    pending: list[PartitionWrite] = []  # the judged batch whose write has not landed
    verdicts, dlq = [], []

    def judge(batch: list[InputRecord], wall: int, sweep: dict[str, ConversationRef] | None = None) -> None:
        nonlocal written, pending
        marks = {(w.topic, w.partition): w.new_watermark for w in pending}
        out = processor.process(batch, {(TOPIC, 0): written}, wall, sweep, live=live, pending_watermarks=marks)
        assert isinstance(out, BatchOutcome)
        verdicts.extend(out.verdicts)
        dlq.extend(out.dlq)
        live.store(out.states, out.dropped)
        if pending:   # the batch before lands only now
            assert store.write(pending) == []
            written = pending[0].new_watermark
            live.written()
        pending = out.writes

    for start, stop in cuts(len(records), batching, max_batch):
        batch = records[start:stop]
        judge(batch, batch[-1].timestamp_ms or 0)
        if stop < len(records) and batching.random() < 0.5:
            wall = batch[-1].timestamp_ms or 0
            wall = batching.randint(wall, max(wall, (records[stop].timestamp_ms or 0) - 1))
            judge([], wall, processor.held_conversations(TOPIC, 0))
    assert store.write(pending) == []
    written = pending[0].new_watermark if pending else written
    pending = []
    live.clear()
    judge([], FAR_FUTURE_MS, processor.held_conversations(TOPIC, 0))
    assert store.write(pending) == []
    judged = frozenset(str(content(v)).replace(f"{prefix}-", "") for v in verdicts)
    return judged, frozenset((r.source_offset, r.reason) for r in dlq)


@pytest.mark.parametrize("seed", [1, 2])
def test_judging_on_in_memory_states_before_the_previous_write_lands_gives_the_same_outcome(
    make_scorer: Callable[..., Scorer], redis_client: redis.Redis, seed: int,
) -> None:
    script = build_script(seed)
    scorer = make_scorer(progress_every_tokens=8)
    judged, reported = run(scorer, redis_client, script, random.Random(0), 1, 0.0)
    rng = random.Random(seed)
    for max_batch, capacity in ((1, 0), (3, 1), (7, 100), (40, 2)):
        other = run_overlapped(scorer, redis_client, script, random.Random(rng.random()), max_batch, capacity)
        assert other[0] == judged, f"verdicts differ (batches of at most {max_batch}, {capacity} states kept)"
        assert sorted(other[1]) == sorted(reported), f"DLQ differs (batches of at most {max_batch})"
