"""One micro-batch: decode deltas, load states, score all conversations in one engine step.

Pure with respect to Kafka: it takes consumed records and returns what must be produced and
what must be written to Redis. The worker decides when (inside a transaction) and whether
(replays suppress output). Failures are contained per record (bad input) and per conversation
(unexpected exceptions): they become DLQ records, and the rest of the batch is judged.

Same input, same outcome: nothing here depends on how records were cut into batches or on the
wall clock, except gap sweeps. A held delta's deadline counts in log time (record timestamps);
each record first expires the gaps of its conversation that its own timestamp shows are overdue,
so a backlog reports exactly the gaps a live worker would. Only a partition that is caught up may
have its gaps expired by the wall clock (``sweep``): nothing later in the log can fill them then.
``type: end`` leaves a tombstone, so a delta after it is reported whether it arrives in the same
batch or hours later (docs/guarantees.md, "Ordering, gaps and `end`").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.dlq import dlq_record
from pipeline.engine.types import FeedRequest, HeadOutputs, StreamEngine
from pipeline.intake import InputLimits, accept
from pipeline.scoring.ordering import held_bytes
from pipeline.scoring.scorer import Scorer
from pipeline.scoring.state import ConversationState, Rejection, SourceRef
from pipeline.state.keys import conversation_key
from pipeline.state.store import PartitionWrite, StateStore
from schemas.messages import DlqRecord, MessageError, TokenDelta, Verdict
from workers.stream.engine_guard import EngineFailure, engine_answers
from workers.stream.live_states import LiveStates
from workers.stream.records import InputRecord

log = logging.getLogger("guardstream.stream")

# A scorer hands out all ready tokens at once, except across a message boundary that follows an
# assistant message: the next message waits for that history's re-render, one more round each.
# So a batch needs at most 1 + (its deltas) rounds; past that something is wrong and we stop
# rather than spin.
_EXTRA_ROUNDS = 2

PartitionId = tuple[str, int]


@dataclass(frozen=True)
class ConversationRef:
    """Where a conversation lives: enough to load and judge it without an input record."""

    conversation_id: str
    tenant: str | None
    topic: str
    partition: int

    @property
    def partition_id(self) -> PartitionId:
        return (self.topic, self.partition)


@dataclass
class _Conversation:
    key: str
    conversation_id: str
    tenant: str | None
    topic: str
    partition: int
    deltas: list[tuple[InputRecord, TokenDelta]] = field(default_factory=list)
    state: ConversationState | None = None
    ended: bool = False
    failed: bool = False
    changed: bool = False
    swept: bool = False        # a gap sweep may expire its held deltas by the wall clock
    held_before: bool = False  # the loaded state held deltas (so the partition's held index names it)


@dataclass(frozen=True)
class StalePartitions:
    """What :meth:`BatchProcessor.process` returns instead of judging: Redis does not hold the
    watermark the caller expects for these partitions (it lost writes, restart or failover, or
    another worker moved on). Nothing was judged; recover them, then process the batch again."""

    partitions: dict[PartitionId, int]  # partition -> stored watermark


class StaleState(Exception):
    """Raised by a caller that cannot recover on the spot (a replay met :class:`StalePartitions`):
    a Redis fault, retried from the top."""

    def __init__(self, partitions: dict[PartitionId, int]) -> None:
        super().__init__(f"stale redis state for {sorted(partitions)}")
        self.partitions = partitions  # partition -> stored watermark


@dataclass
class BatchOutcome:
    verdicts: list[Verdict] = field(default_factory=list)
    dlq: list[DlqRecord] = field(default_factory=list)
    writes: list[PartitionWrite] = field(default_factory=list)
    ended_keys: list[str] = field(default_factory=list)
    touched: dict[str, ConversationRef] = field(default_factory=dict)
    held: dict[str, ConversationRef] = field(default_factory=dict)  # conversations holding out-of-order deltas
    deltas: int = 0
    tokens_scored: int = 0
    cache_lookups: int = 0                                           # engine requests ...
    cache_hits: int = 0                                              # ... whose KV cache was warm
    conversations_scored: int = 0
    delta_ts_ms: dict[str, int] = field(default_factory=dict)        # conversation key -> newest delta ts_ms
    # What the batch leaves in memory (workers.stream.live_states): the states its write stores, and the
    # conversations whose in-memory state it may have left half-changed (read them from Redis again).
    states: dict[str, ConversationState] = field(default_factory=dict)
    dropped: dict[str, None] = field(default_factory=dict)


def has_held_deltas(state: ConversationState) -> bool:
    """Whether the scorer is holding deltas that wait for a gap to fill (they may expire)."""
    return bool(state.held)


def held_counts(state: ConversationState) -> tuple[int, int]:
    """(held deltas, bytes of their original records): what per-conversation limits bound."""
    return len(state.held), held_bytes(state)


def encode_held_ref(ref: ConversationRef) -> bytes:
    return json.dumps([ref.conversation_id, ref.tenant]).encode()


def decode_held_ref(data: bytes, topic: str, partition: int) -> ConversationRef | None:
    """A held-index entry; None for anything unreadable (the entry is then simply not swept)."""
    try:
        conversation_id, tenant = json.loads(data)
    except (ValueError, TypeError):
        return None
    if not isinstance(conversation_id, str) or not (tenant is None or isinstance(tenant, str)):
        return None
    return ConversationRef(conversation_id, tenant, topic, partition)


class BatchProcessor:
    def __init__(
        self,
        scorer: Scorer,
        engine: StreamEngine,
        store: StateStore,
        worker_name: str,
        max_text_bytes: int,
        gap_timeout_ms: int,
        limits: InputLimits | None = None,
    ) -> None:
        self.scorer = scorer
        self.engine = engine
        self.store = store
        self.worker_name = worker_name
        self.max_text_bytes = max_text_bytes
        self.gap_timeout_ms = gap_timeout_ms
        self.limits = limits or InputLimits(max_text_bytes=max_text_bytes)

    # ------------------------------------------------------------------------------------
    def process(
        self,
        records: Sequence[InputRecord],
        expected_watermarks: Mapping[PartitionId, int],
        now_ms: int,
        sweep: Mapping[str, ConversationRef] | None = None,
        expire_gaps: bool = True,
        live: LiveStates | None = None,
        pending_watermarks: Mapping[PartitionId, int] | None = None,
    ) -> BatchOutcome | StalePartitions:
        """Judge ``records`` (in offset order per partition) plus the conversations in ``sweep``.

        ``expected_watermarks`` is what the caller believes Redis holds per partition; the
        returned writes carry it so that the store can fence them. A state found in ``live`` is
        taken from there instead of Redis (and changed in place). ``pending_watermarks`` are those
        of a judged batch whose write has not happened yet (its commit overlaps this batch): this
        batch's writes are fenced on them, since they land after it. Conversations in ``sweep`` have
        their gaps expired by the wall clock ``now_ms`` (unless ``expire_gaps`` is False): only pass
        conversations of partitions with nothing left to read. Record-driven expiry is by log time
        and always on, so a replay rebuilds the same states. When Redis does not hold
        ``expected_watermarks``, nothing is judged: :class:`StalePartitions` says which partitions
        the caller must recover first.
        """
        out = BatchOutcome(deltas=len(records))
        convs: dict[str, _Conversation] = {}
        last_offset: dict[PartitionId, int] = {}
        for rec in records:
            pid = (rec.topic, rec.partition)
            last_offset[pid] = max(last_offset.get(pid, -1), rec.offset)
            try:
                delta = accept(rec.key, rec.value, self.limits)
            except MessageError as exc:
                out.dlq.append(self._dlq(str(exc), rec, now_ms))
                continue
            key = conversation_key(delta.tenant, delta.conversation_id)
            conv = convs.get(key)
            if conv is None:
                conv = convs[key] = _Conversation(key, delta.conversation_id, delta.tenant, rec.topic, rec.partition)
            conv.deltas.append((rec, delta))
            if delta.ts_ms is not None:
                out.delta_ts_ms[key] = delta.ts_ms
        for key, ref in (sweep or {}).items():
            if key not in convs:
                convs[key] = _Conversation(key, ref.conversation_id, ref.tenant, ref.topic, ref.partition)
            convs[key].swept = expire_gaps

        stale = self._load_states(convs.values(), out, now_ms, expected_watermarks, live)
        if stale:
            return StalePartitions(stale)
        for conv in convs.values():
            self._apply(conv, out, now_ms)
        self._score(list(convs.values()), out, now_ms)

        out.writes = self._writes(convs.values(), last_offset, {**expected_watermarks, **(pending_watermarks or {})},
                                  out)
        for conv in convs.values():
            ref = ConversationRef(conv.conversation_id, conv.tenant, conv.topic, conv.partition)
            out.touched[conv.key] = ref
            if conv.ended and conv.changed:
                out.ended_keys.append(conv.key)
            elif conv.state is not None and not conv.failed and has_held_deltas(conv.state):
                out.held[conv.key] = ref
        return out

    # ------------------------------------------------------------------------------------
    def _load_states(
        self, convs: Iterable[_Conversation], out: BatchOutcome, now_ms: int,
        expected: Mapping[PartitionId, int], live: LiveStates | None,
    ) -> dict[PartitionId, int]:
        """Load the states; the partitions whose watermark is not ``expected`` (then nothing is loaded)."""
        everyone = list(convs)
        # The input topic is one topic; partitions we have an expectation for are checked, in the
        # same atomic read as the states, so the states judged below are the ones Kafka implies
        # (and the ones kept in memory are still the ones Redis holds).
        checked = sorted({(c.topic, c.partition) for c in everyone if (c.topic, c.partition) in expected})
        topic = checked[0][0] if checked else ""
        todo = []
        for conv in everyone:
            kept = live.get(conv.key) if live is not None else None
            if kept is None:
                todo.append(conv)
            else:
                conv.state = kept
                conv.held_before = has_held_deltas(kept)
        stored, marks = self.store.load_with_watermarks([c.key for c in todo], topic, [p for _, p in checked])
        stale = {(topic, p): mark for p, mark in marks.items() if mark != expected[(topic, p)]}
        if stale:
            for conv in everyone:
                conv.state = None
            return stale
        for conv in todo:
            raw = stored.get(conv.key)
            if raw is None:
                conv.state = self.scorer.new_state(conv.conversation_id, conv.tenant)
                continue
            try:
                conv.state = self.scorer.decode_state(raw)
                conv.held_before = has_held_deltas(conv.state)
            except Exception as exc:  # an unreadable state must not stop the partition
                self._fail(conv, f"unreadable conversation state: {exc!r}", out, now_ms)
        return {}

    def _apply(self, conv: _Conversation, out: BatchOutcome, now_ms: int) -> None:
        if conv.failed or conv.state is None:
            return
        state = conv.state
        try:
            for rec, delta in conv.deltas:
                source = SourceRef(rec.topic, rec.partition, rec.offset)
                log_ms = rec.timestamp_ms if rec.timestamp_ms is not None and rec.timestamp_ms >= 0 else now_ms
                # The record's own time says which gaps were overdue when it was appended: expire
                # them first, exactly as a live worker's sweep would have before this record came.
                rejections = self.scorer.expire(state, log_ms, self.gap_timeout_ms)
                if delta.type == "end":
                    # Scored to the end first (the batch may hold its last chunks), then a tombstone.
                    rejections += self.scorer.end(state, rec.value or b"", source)
                else:
                    rejections += self.scorer.apply(state, delta, rec.value or b"", source, log_ms)
                conv.changed = True
                conv.ended = state.ended
                out.dlq.extend(self._dlq_of(r, now_ms) for r in rejections)
            if conv.swept and not state.ended:
                expired = self.scorer.expire(state, now_ms, self.gap_timeout_ms)
                if expired:
                    conv.changed = True
                out.dlq.extend(self._dlq_of(r, now_ms) for r in expired)
        except Exception as exc:
            log.exception("applying deltas failed", extra={"conversation_key": conv.key})
            self._fail(conv, f"internal error while applying deltas: {exc!r}", out, now_ms)

    def _score(self, convs: list[_Conversation], out: BatchOutcome, now_ms: int) -> None:
        max_rounds = _EXTRA_ROUNDS + sum(len(conv.deltas) for conv in convs)
        for _ in range(max_rounds):
            ready: list[tuple[_Conversation, FeedRequest]] = []
            for conv in convs:
                if conv.failed or conv.state is None:
                    continue
                try:
                    request = self.scorer.pending(conv.state)
                except Exception as exc:
                    self._fail(conv, f"internal error while preparing tokens: {exc!r}", out, now_ms)
                    continue
                if request is not None:
                    ready.append((conv, request))
            if not ready:
                return
            answered = [(conv, conv.state, outputs)
                        for (conv, _), outputs in zip(ready, self._run(ready, out, now_ms), strict=True)
                        if outputs is not None and conv.state is not None]
            results = self.scorer.absorb_batch([(state, outputs) for _, state, outputs in answered], now_ms)
            for (conv, _, outputs), result in zip(answered, results, strict=True):
                out.tokens_scored += len(outputs)
                if isinstance(result, Exception):
                    log.error("absorbing model outputs failed", exc_info=result, extra={"conversation_key": conv.key})
                    self._fail(conv, f"internal error while scoring: {result!r}", out, now_ms)
                    continue
                out.verdicts.extend(result.verdicts)
                out.dlq.extend(self._dlq_of(r, now_ms) for r in result.rejections)
                conv.changed = True
            out.conversations_scored += len(ready)
        for conv in convs:
            if not conv.failed and conv.state is not None and self.scorer.pending(conv.state):
                self._fail(conv, "internal error: scorer kept asking for more tokens", out, now_ms)

    def _run(
        self, ready: list[tuple[_Conversation, FeedRequest]], out: BatchOutcome, now_ms: int
    ) -> list[HeadOutputs | None]:
        """One engine step for all; if it fails, find the culprit(s) one conversation at a time."""
        cache = self.engine.cache
        out.cache_lookups += len(ready)
        out.cache_hits += sum(1 for _, request in ready if request.key in cache)
        try:
            return list(self.engine.run([r for _, r in ready]))
        except Exception as exc:
            if not engine_answers(self.engine):
                # Broken engine, not bad input: nothing of this batch may be dead-lettered.
                raise EngineFailure(f"the model engine fails even on a probe request: {exc!r}"[:500]) from exc
            if len(ready) == 1:
                conv, _ = ready[0]
                log.exception("engine failed", extra={"conversation_key": conv.key})
                self._fail(conv, "internal error in the model engine", out, now_ms)
                self.engine.evict(conv.key)
                return [None]
        results: list[HeadOutputs | None] = []
        for pair in ready:
            results.extend(self._run([pair], out, now_ms))
        return results

    # ------------------------------------------------------------------------------------
    def _writes(
        self,
        convs: Iterable[_Conversation],
        last_offset: Mapping[PartitionId, int],
        expected: Mapping[PartitionId, int],
        out: BatchOutcome,
    ) -> list[PartitionWrite]:
        writes: dict[PartitionId, PartitionWrite] = {}

        def write_for(pid: PartitionId) -> PartitionWrite:
            if pid not in writes:
                old = expected.get(pid, -1)
                writes[pid] = PartitionWrite(pid[0], pid[1], old, max(old, last_offset.get(pid, old)))
            return writes[pid]

        for pid in last_offset:
            write_for(pid)
        for conv in convs:
            if conv.failed or conv.state is None:
                out.dropped[conv.key] = None
                continue
            holds = not conv.ended and has_held_deltas(conv.state)
            if holds:
                ref = ConversationRef(conv.conversation_id, conv.tenant, conv.topic, conv.partition)
                write_for((conv.topic, conv.partition)).held[conv.key] = encode_held_ref(ref)
            elif conv.held_before or conv.swept:
                write_for((conv.topic, conv.partition)).unheld.add(conv.key)
            if not conv.changed:
                continue
            w = write_for((conv.topic, conv.partition))
            # An ended conversation leaves a tombstone (not nothing) so that a later delta of its id is
            # reported the same way whether it arrives in this batch or after the state was written.
            state = self.scorer.tombstone(conv.state) if conv.ended else conv.state
            w.states[conv.key] = self.scorer.encode_state(state)
            out.states[conv.key] = state
        return list(writes.values())

    def _fail(self, conv: _Conversation, reason: str, out: BatchOutcome, now_ms: int) -> None:
        """Send a conversation's deltas of this batch to the DLQ; its stored state stays as it was."""
        conv.failed = True
        out.dlq.extend(self._dlq(reason, rec, now_ms, delta.conversation_id) for rec, delta in conv.deltas)

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def kv_cache_bytes(self) -> int:
        """Bytes the engine's KV cache holds now (0 for an engine without one)."""
        return self.engine.cache.nbytes

    def forget(self, key: str) -> None:
        """This worker judges the conversation no more (it ended, or its partition went elsewhere):
        its KV cache goes. Its durable state stays in Redis."""
        self.engine.evict(key)

    def held_conversations(self, topic: str, partition: int) -> dict[str, ConversationRef]:
        """The partition's conversations holding out-of-order deltas, from the durable index: what a
        worker that takes the partition over must sweep so their gaps are still reported."""
        refs = {}
        for key, data in self.store.held_index(topic, partition).items():
            ref = decode_held_ref(data, topic, partition)
            if ref is not None:
                refs[key] = ref
        return refs

    def _dlq(self, reason: str, rec: InputRecord, now_ms: int, conversation_id: str | None = None) -> DlqRecord:
        return dlq_record(reason, rec.value, rec.topic, rec.partition, rec.offset, self.worker_name, now_ms,
                          key=rec.key, conversation_id=conversation_id)

    def _dlq_of(self, rejection: Rejection, now_ms: int) -> DlqRecord:
        src = rejection.source
        # Only accepted deltas reach the scorer, and their key is their conversation id (pipeline.intake).
        return dlq_record(rejection.reason, rejection.raw, src.topic, src.partition, src.offset, self.worker_name,
                          now_ms, key=rejection.conversation_id.encode(), conversation_id=rejection.conversation_id)

