"""The generative worker: Qwen3Guard-Gen rulings on complete turns, as a faust-streaming app.

Data flow: its own consumer group (``settings.generative_group``, also the faust app id) reads
``guard.in``; deltas are assembled per conversation into bounded drafts backed by an
append-only changelog, one record per accepted delta (recovered from the changelog topic on
restart, expired after ``gen_draft_idle_s`` without deltas; :mod:`workers.generative.assembly`,
:mod:`workers.generative.drafts`); each
complete user/assistant message is ruled by Gen through a dynamic batcher running the model in
threads (:mod:`workers.generative.batcher`); one final Verdict per message goes to
``guard.verdicts``; undecodable or contradictory input goes to ``guard.in.dlq``.

Crash safety (at-least-once, duplicates identical):
- The stream is consumed without automatic acks. An event is acked only once its effects are
  durable: its table write delivered to the changelog, every ruling it triggered delivered to
  ``guard.verdicts``, its DLQ record delivered; and acks go out in offset order per partition
  (faust 0.15 can commit past a single unacked offset when acks arrive out of order). faust
  commits the highest offset below which everything is acked. So a committed offset never passes
  a chunk missing from the changelog or a message whose ruling was not delivered. (Table writes
  bypass ``table[key] = value``: faust's commit-time flush can give up with changelog writes
  still buffered; see ``_store``.)
- An event takes its slot in the per-partition ack order on arrival: if its handling raises,
  later events are never acked past it and the worker exits (EXIT_WRITE_FAILED) to redo it.
- After SIGKILL the table comes back from its changelog (possibly ahead of the committed
  offset) and the uncommitted events are replayed. Applying a delta is idempotent; a replayed
  event re-triggers every complete message that is not marked ruled, so a ruling that was lost
  is computed again. "Ruled" marks are folded into the table when the next event of that
  conversation is processed, so a message is ruled again only if its marker had not landed yet.
- Every completed recovery also rules what the recovered drafts hold complete and unruled, with
  no event: a quiet conversation whose complete message is in the changelog but whose events are
  not replayed would otherwise wait forever (``on_recovery_completed``).
- On a rebalance the ack order of revoked partitions is dropped (their events are re-read from
  the committed offset if they come back), and an event needing a ruling already in flight waits
  for it, whichever event or recovery started it (``on_partitions_revoked``, ``_schedule``).
- Re-rulings are identical: greedy decoding of the same rendered text (readiness and context
  depend only on the conversation's content, see assembly), and ``verdict_id`` is
  ``{conversation}/{message}/generative/final/0``, so consumers dedupe on it. Scores are rounded
  to 3 decimals: a ruling recomputed in another batch shape differs only by float noise (~1e-6).
- A conversation's "end" waits for its in-flight rulings before the draft is deleted, so a
  replay after a crash can never rebuild a partial conversation whose rulings were not delivered.
- A Kafka write that fails (changelog, verdict, DLQ) is logged and counted, and the worker exits
  with EXIT_WRITE_FAILED: its event stays unacked, so a partition never stops committing
  silently; the next worker redoes the event from the committed offset.

Reconciliation with the stream worker (see docs/generative.md): both verdicts land on
``guard.verdicts`` for the same message with different ``source``. A consumer blocks if either
final verdict blocks; Gen rulings arrive later (complete turns only), so when Gen is stricter than
the stream verdict its ``action`` says ``block`` after the stream allowed the message: the
consumer retracts or flags the already-shown text. Both verdicts stay visible side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from pipeline.clock import now_ms
from pipeline.config import Settings
from pipeline.dlq import DEFAULT_MESSAGE_MAX_BYTES, dlq_max_bytes, dlq_record, encode_fitting, reason_class
from pipeline.errors import UserError
from pipeline.gen.moderator import GenModerator, GenRuling
from pipeline.gen.render import ModerationRequest
from pipeline.intake import InputLimits, accept
from pipeline.kafka.faust_settings import faust_kafka_settings
from pipeline.logging import configure_logging, get_logger
from pipeline.ops.ports import start_ops_server
from pipeline.ops.server import OpsServer
from pipeline.policy import PolicyBook, load_policy_book
from pipeline.state.keys import conversation_key, parse_conversation_key
from schemas.messages import DlqRecord, MessageError, TokenDelta, bounded, encode
from workers.generative.assembly import (
    AssemblyError,
    ConversationDraft,
    DraftLimits,
    RuledOp,
    apply_chunk,
    apply_ruled,
    chunk_op,
    encode_op,
    incomplete_messages,
    ready_for_ruling,
    stranded_messages,
)
from workers.generative.batcher import RulingBatcher
from workers.generative.continuity import KafkaLogProbe, OffsetContinuity, Step
from workers.generative.drafts import (
    CHANGELOG_RECORD_LIMIT,
    RECORD_OVERHEAD,
    DraftStore,
    make_draft_table,
    record_key,
    tombstone_keys,
)
from workers.generative.metrics import GenMetrics
from workers.generative.verdicts import generative_verdict

WORKER_NAME = "generative"
TABLE_NAME = "conversations"
SHUTDOWN_GRACE_S = 20.0
EXIT_WRITE_FAILED = 75   # EX_TEMPFAIL: restart the worker; its unacked events are redone

log = get_logger("guardstream.generative")


def draft_limits(settings: Settings) -> DraftLimits:
    return DraftLimits(max_message_chars=settings.gen_max_message_chars, max_messages=settings.gen_max_messages,
                       max_held_chars=settings.gen_max_held_chars)


def check_limits(settings: Settings) -> None:
    """Refuse settings under which a changelog record could pass Kafka's message limit."""
    if settings.max_text_bytes + RECORD_OVERHEAD > CHANGELOG_RECORD_LIMIT:
        raise UserError(f"--max-text-bytes {settings.max_text_bytes} is too large for the generative worker: one "
                        f"delta is one changelog record, which must stay under {CHANGELOG_RECORD_LIMIT} bytes; "
                        f"use at most {CHANGELOG_RECORD_LIMIT - RECORD_OVERHEAD}")
    for name in ("gen_max_message_chars", "gen_max_messages", "gen_draft_idle_s"):
        if getattr(settings, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")


@dataclass
class _AckEntry:
    event: Any
    done: bool = False


class ConversationRuler:
    """Per-event logic of the faust agent: assemble, schedule rulings, emit verdicts, ack."""

    def __init__(self, *, table: Any, store: DraftStore, verdicts_topic: Any, dlq_topic: Any,
                 batcher: RulingBatcher, policies: PolicyBook, model_name: str, settings: Settings,
                 metrics: GenMetrics, dlq_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES,
                 continuity: OffsetContinuity | None = None,
                 seek: Callable[[Any, int], Awaitable[Any]] | None = None) -> None:
        self.table = table
        # Both or neither: without them (unit tests) every event is handled as it comes.
        self.continuity = continuity
        self.seek = seek
        self.store = store
        self.verdicts_topic = verdicts_topic
        self.dlq_topic = dlq_topic
        self.batcher = batcher
        self.policies = policies
        self.model_name = model_name
        self.settings = settings
        self.metrics = metrics
        self.write_failure: BaseException | None = None   # set once a Kafka write failed: the worker exits
        self.handling_failure: BaseException | None = None  # set once an event's handling raised: the worker exits
        self.limits = InputLimits.of(settings)
        self.dlq_max_bytes = dlq_max_bytes
        self._inflight: dict[tuple[bytes, int], asyncio.Future[None]] = {}
        self._delivered: dict[bytes, set[int]] = defaultdict(set)   # delivered, not yet recorded as ruled
        self._busy: dict[bytes, int] = defaultdict(int)               # keys whose event is being handled
        self._capacity = asyncio.Semaphore(max(1, settings.gen_max_batch * settings.gen_concurrency * 4))
        self._ackers: set[asyncio.Future[None]] = set()
        self._ack_order: dict[Any, deque[_AckEntry]] = defaultdict(deque)

    # --- the agent's entry point ----------------------------------------------------------------
    async def on_event(self, event: Any) -> None:
        if self.continuity is not None and self.seek is not None:
            tp, offset = event.message.tp, event.message.offset
            step = await self.continuity.step(tp, offset)
            if step is Step.DROP:
                return
            if step is Step.REWIND:
                self.metrics.input_rewinds.inc()
                expected = self.continuity.expected(tp)
                assert expected is not None
                await self.seek(tp, expected)
                return
        self.metrics.deltas.inc()
        # The event takes its place in its partition's ack order on arrival, not when its handling
        # ends: an event whose handling raises then holds back the acks of every later event of its
        # partition, instead of being stepped over by them (and the worker exits to redo it).
        entry = self._enter(event)
        try:
            await self._handle(event, entry)
        except Exception as exc:
            self._handling_failed(exc, event)

    async def _handle(self, event: Any, entry: _AckEntry) -> None:
        try:
            delta = accept(_bytes_or_none(event.key), _bytes_or_none(event.value), self.limits)
        except MessageError as exc:
            await self._dead_letter(event, str(exc), None)
            self._ack_when_done(entry, [])
            return
        # The draft key is the shared injective state key (pipeline.state.keys): tenants never share a draft.
        key = conversation_key(delta.tenant, delta.conversation_id).encode("utf-8")
        self._busy[key] += 1
        try:
            await self._on_delta(event, entry, key, delta)
        finally:
            self._busy[key] -= 1
            if not self._busy[key]:
                del self._busy[key]

    async def _on_delta(self, event: Any, entry: _AckEntry, key: bytes, delta: TokenDelta) -> None:
        partition = event.message.partition
        draft = self.store.get(key)
        if draft is not None and draft.partition != partition:
            await self._dead_letter(event, f"conversation arrived on partition {partition} but its draft is on "
                                           f"partition {draft.partition}: the Kafka key must equal conversation_id",
                                    delta.conversation_id)
            self._ack_when_done(entry, [])
            return
        pending = self._record_delivered(key, draft) if draft is not None else []
        if delta.type == "end":
            await self._end_conversation(event, entry, key, delta, draft, pending)
            return
        fresh = draft is None
        if draft is None:
            draft = ConversationDraft(partition=partition)
        try:
            op = chunk_op(delta)
            try:
                value = encode_op(op)
            except (OverflowError, UnicodeEncodeError, msgspec.EncodeError) as exc:
                raise AssemblyError(f"chunk cannot be recorded: {type(exc).__name__}") from None
            applied = apply_chunk(draft, op, self.store.limits)
        except AssemblyError as exc:
            await self._dead_letter(event, str(exc), delta.conversation_id)
            self._ack_when_done(entry, pending)
            return
        if applied:
            if fresh:
                self.store.drafts[key] = draft
            pending.append(self._record(partition, key, draft, value))
            message = draft.messages[op.message_index]
            if message.complete and message.final_seq is not None:
                self.metrics.messages_completed.labels(role=delta.role).inc()
                if message.elided_chars:
                    self.metrics.draft_elided.inc()
        self.metrics.conversations.set(len(self.store))
        pending += await self._schedule(event, key, delta.conversation_id, delta.ts_ms, draft)
        self._ack_when_done(entry, pending)

    # --- the changelog -------------------------------------------------------------------------
    # faust's commit-time producer flush gives up after 0.1 s with messages still buffered, so a
    # busy worker can commit an offset whose changelog write never landed (seen in tests: a chunk
    # vanished across a SIGKILL). Writes therefore go through send_changelog, whose future says
    # when the write is durable, and the event is acked only after that.
    def _record(self, partition: int, key: bytes, draft: ConversationDraft, value: bytes) -> Any:
        """Append one operation to the conversation's changelog log: O(the operation)."""
        number = draft.next_record
        draft.next_record += 1
        draft.last_seen_s = time.time()
        record = record_key(key, number)
        self.metrics.changelog_records.inc()
        self.metrics.changelog_bytes.inc(len(record) + len(value))
        return self.table.send_changelog(partition, record, value, key_serializer="raw", value_serializer="raw")

    def _forget(self, key: bytes, draft: ConversationDraft) -> list[Any]:
        """Drop the draft: one tombstone per record it wrote, so compaction removes them all."""
        self.store.drop(key)
        self.metrics.conversations.set(len(self.store))
        return [self.table.send_changelog(draft.partition, k, None, key_serializer="raw", value_serializer="raw")
                for k in tombstone_keys(key, draft)]

    def _record_delivered(self, key: bytes, draft: ConversationDraft) -> list[Any]:
        """Record delivered rulings in the draft (changelog writes happen on an event of this conversation)."""
        writes = []
        for index in sorted(self._delivered.pop(key, set())):
            op = RuledOp(index)
            if apply_ruled(draft, op):
                writes.append(self._record(draft.partition, key, draft, encode_op(op)))
        return writes

    # --- rulings -----------------------------------------------------------------------------
    async def _schedule(self, event: Any | None, key: bytes, conversation_id: str, sent_ms: int | None,
                        draft: ConversationDraft) -> list[asyncio.Future[None]]:
        """Start the rulings the draft is ready for; returns every ruling the event must wait for."""
        scheduled: list[asyncio.Future[None]] = []
        for index, request in ready_for_ruling(draft).items():
            if index in self._delivered.get(key, ()):
                continue
            inflight = self._inflight.get((key, index))
            if inflight is not None:
                # Started by another event or by the recovery sweep. This event waits for it too:
                # after a rebalance the event that started it may be one whose ack was dropped
                # (see on_partitions_revoked), so nothing else would hold the commit back.
                scheduled.append(inflight)
                continue
            await self._capacity.acquire()
            self.metrics.inflight.inc()
            future = asyncio.ensure_future(
                self._rule_and_emit(event, key, conversation_id, sent_ms, draft, index, request))
            self._inflight[(key, index)] = future
            future.add_done_callback(functools.partial(self._on_ruling_done, key, index))
            scheduled.append(future)
        return scheduled

    def _on_ruling_done(self, key: bytes, index: int, _future: asyncio.Future[None]) -> None:
        self._inflight.pop((key, index), None)
        self._capacity.release()
        self.metrics.inflight.dec()

    async def _rule_and_emit(self, event: Any | None, key: bytes, conversation_id: str, sent_ms: int | None,
                             draft: ConversationDraft, index: int, request: ModerationRequest) -> None:
        started = time.perf_counter()
        try:
            ruling: GenRuling = await self.batcher.submit(request)
        except Exception as exc:
            self.metrics.ruling_failures.inc()
            log.error("ruling failed", extra={"conversation_id": conversation_id, "message_index": index,
                                              "error": repr(exc)})
            if event is not None:
                await self._dead_letter(event, f"generative ruling failed for message {index}: {exc}",
                                        conversation_id)
            # From the recovery sweep there is no input record to dead-letter: the message stays
            # unruled, so the next event of its conversation or the next recovery tries again.
            return
        verdict = generative_verdict(
            conversation_id=conversation_id, message_index=index, role=draft.messages[index].role,
            tenant=draft.tenant, ruling=ruling, policies=self.policies, model=self.model_name,
            now_ms=now_ms(), sent_ms=sent_ms,
        )
        delivery = await self.verdicts_topic.send(key=conversation_id.encode("utf-8"), value=encode(verdict),
                                                  force=True)
        await delivery
        self._delivered[key].add(index)
        self.metrics.rulings.labels(risk=verdict.risk, action=verdict.action).inc()
        if ruling.truncated_tokens:
            self.metrics.truncated.inc()
        self.metrics.ruling_seconds.observe(time.perf_counter() - started)
        log.debug("ruling", extra={"conversation_id": conversation_id, "message_index": index,
                                   "risk": verdict.risk, "action": verdict.action})

    def _mark_delivered(self, key: bytes, draft: ConversationDraft) -> bool:
        """Fold delivered rulings into the draft (table writes need an event of this conversation)."""
        done = self._delivered.pop(key, set())
        changed = False
        for index in done:
            message = draft.messages.get(index)
            if message is not None and not message.ruled:
                message.ruled = True
                changed = True
        return changed

    def _enter(self, event: Any) -> _AckEntry:
        """The event's place in its partition's ack order."""
        entry = _AckEntry(event)
        self._ack_order[event.message.tp].append(entry)
        return entry

    def _ack_when_done(self, entry: _AckEntry, pending: Sequence[Any]) -> None:
        """Ack the entry's event once ``pending`` is done, and never before the partition's earlier events.

        In-order acks per partition: faust 0.15's commit logic can step over a single unacked
        offset when the one after it is acked (and checks nothing while the committed offset is
        0), so out-of-order acks could commit past a message whose ruling never landed.
        """
        event = entry.event
        queue = self._ack_order[event.message.tp]
        if not pending:
            entry.done = True
            self._release_acks(queue)
            return

        async def ack_later() -> None:
            results = await asyncio.gather(*pending, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                # Not delivered: the event and everything after it in its partition stay unacked,
                # so the offset is never committed past it. The partition would stop committing,
                # so the worker exits and the next one redoes the work from the committed offset.
                self._write_failed(failures[0], event.message.partition, event.message.offset)
                return
            entry.done = True
            self._release_acks(self._ack_order[event.message.tp])

        task = asyncio.ensure_future(ack_later())
        self._ackers.add(task)
        task.add_done_callback(self._ackers.discard)

    def _handling_failed(self, error: Exception, event: Any) -> None:
        """An event's handling raised: its ack never goes out, so its partition stops committing; the worker exits."""
        self.metrics.handling_failures.inc()
        message = event.message
        log.error("event handling failed; the worker exits so that its uncommitted events are redone",
                  exc_info=error, extra={"error": repr(error)[:300], "partition": message.partition,
                                         "offset": message.offset})
        if self.handling_failure is None:
            self.handling_failure = error

    def _write_failed(self, error: BaseException, partition: int, offset: int | None) -> None:
        self.metrics.write_failures.inc()
        log.error("kafka write not delivered; the worker exits so that its uncommitted events are redone",
                  extra={"error": repr(error)[:300], "partition": partition, "offset": offset})
        if self.write_failure is None:
            self.write_failure = error

    def _watch(self, writes: Sequence[Any], partition: int) -> None:
        """Surface failures of writes that no event waits for (expiry tombstones)."""
        if not writes:
            return

        async def watch() -> None:
            results = await asyncio.gather(*writes, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                self._write_failed(failures[0], partition, None)

        task = asyncio.ensure_future(watch())
        self._ackers.add(task)
        task.add_done_callback(self._ackers.discard)

    @staticmethod
    def _release_acks(queue: deque[_AckEntry]) -> None:
        while queue and queue[0].done:
            queue.popleft().event.ack()

    async def _end_conversation(self, event: Any, entry: _AckEntry, key: bytes, delta: TokenDelta,
                                draft: ConversationDraft | None, pending: list[Any]) -> None:
        if draft is not None:
            # Rulings still running must land before the state goes: a replay after a crash could
            # not rebuild the conversation from the events that are left.
            waiting = [f for (k, _), f in list(self._inflight.items()) if k == key]
            waiting += await self._schedule(event, key, delta.conversation_id, delta.ts_ms, draft)
            if waiting:
                await asyncio.gather(*waiting, return_exceptions=True)
            for index in stranded_messages(draft):
                await self._dead_letter(event, f"assistant message {index} got no ruling: a lower message index "
                                               "never arrived complete", delta.conversation_id)
            pending = [*pending, *self._forget(key, draft)]
        self._delivered.pop(key, None)
        self._ack_when_done(entry, pending)

    # --- rebalances --------------------------------------------------------------------------------
    def on_partitions_revoked(self, revoked: set[Any]) -> None:
        """Forget the ack order of revoked partitions: their uncommitted events are read again.

        faust drops its own ack bookkeeping of a revoked partition and, if the partition comes
        back, re-reads it from the committed offset. An ack of an event of the old assignment would
        then land in the new assignment's bookkeeping, where faust's commit can step over a single
        unacked offset; so those events are never acked. Their rulings still run and land; the
        replayed events wait for them (see _schedule).
        """
        if self.continuity is not None:
            self.continuity.forget(revoked)
        dropped = 0
        for tp in revoked:
            queue = self._ack_order.pop(tp, None)
            if queue:
                dropped += len(queue)
                queue.clear()
        if revoked:
            log.info("partitions revoked", extra={"partitions": len(revoked), "unacked_events_dropped": dropped})

    def on_recovery_completed(self, settled: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Rule what the recovered drafts hold complete and unruled, without waiting for an event.

        A message whose last chunk is in the changelog is complete after recovery whatever the
        committed offset of guard.in says; if no event of its conversation is replayed or arrives
        later (the conversation is quiet), nothing else would ever rule it. The rulings start once
        ``settled`` returns (faust has seeked the input partitions and resumed them), so that model
        work does not compete with faust's own start-up of the stream.
        """
        for key in [k for k in self._delivered if self.store.get(k) is None]:
            del self._delivered[key]    # its draft went with a revoked partition
        task = asyncio.ensure_future(self._rule_recovered(settled))
        self._ackers.add(task)
        task.add_done_callback(self._ackers.discard)

    async def _rule_recovered(self, settled: Callable[[], Awaitable[Any]] | None) -> None:
        if settled is not None:
            await settled()
        started: list[asyncio.Future[None]] = []
        for key, draft in list(self.store.drafts.items()):
            if self.store.get(key) is not draft or not ready_for_ruling(draft):
                continue
            try:
                _, conversation_id = parse_conversation_key(key.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue    # not a key this worker wrote
            started += await self._schedule(None, key, conversation_id, None, draft)
        if started:
            log.info("recovered drafts: rulings started", extra={"rulings": len(started)})
            results = await asyncio.gather(*started, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                self._write_failed(failures[0], -1, None)

    # --- idle expiry -----------------------------------------------------------------------------
    def expire_idle(self, now_s: float) -> int:
        """Drop drafts idle for ``gen_draft_idle_s``; their unfinished messages are logged and counted."""
        idle_s = self.settings.gen_draft_idle_s
        busy = set(self._busy) | {k for k, _ in self._inflight}
        expired = 0
        for key in self.store.idle(now_s, idle_s):
            draft = self.store.get(key)
            if draft is None or key in busy:
                continue
            unfinished = incomplete_messages(draft) + stranded_messages(draft)
            self._delivered.pop(key, None)
            self._watch(self._forget(key, draft), draft.partition)
            self.metrics.expired.inc()
            self.metrics.expired_unfinished.inc(len(unfinished))
            expired += 1
            log.warning("idle conversation expired", extra={
                "conversation_id": key.decode("utf-8", "replace")[:256], "partition": draft.partition,
                "idle_s": round(now_s - draft.last_seen_s, 1), "unfinished_messages": unfinished[:20]})
        self.metrics.changelog_skipped.set(self.store.skipped_records)
        return expired

    async def reseek_stalled(self, assigned: Iterable[Any], position: Callable[[Any], Awaitable[int | None]]) -> None:
        """Seek back every input partition whose consumer moved past records that never reached us
        (``OffsetContinuity.stalled``); asked periodically while no rebalance or recovery runs."""
        if self.continuity is None or self.seek is None:
            return
        for tp in assigned:
            offset = await self.continuity.stalled(tp, functools.partial(position, tp))
            if offset is not None:
                self.metrics.input_rewinds.inc()
                await self.seek(tp, offset)

    async def wait_idle(self, timeout_s: float) -> None:
        """Let in-flight rulings finish and their events ack (graceful shutdown)."""
        pending = [*self._inflight.values(), *self._ackers]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    # --- dead letters ------------------------------------------------------------------------
    async def _dead_letter(self, event: Any, reason: str, conversation_id: str | None) -> None:
        self.metrics.dlq.labels(kind=reason_class(reason)).inc()
        raw = bytes(event.value) if isinstance(event.value, bytes | bytearray) else b""
        key = bytes(event.key) if isinstance(event.key, bytes | bytearray) else None
        message = event.message
        await self._send_dlq(dlq_record(reason, raw, message.topic, message.partition, message.offset, WORKER_NAME,
                                        now_ms(), key=key, conversation_id=conversation_id))
        log.warning("dead letter", extra={"reason": bounded(reason), "partition": message.partition,
                                          "offset": message.offset})

    async def _send_dlq(self, record: DlqRecord) -> None:
        key = record.conversation_id.encode("utf-8") if record.conversation_id else None
        delivery = await self.dlq_topic.send(key=key, value=encode_fitting(record, self.dlq_max_bytes), force=True)
        await delivery


def _bytes_or_none(value: Any) -> bytes | None:
    return bytes(value) if isinstance(value, bytes | bytearray) else None


# --- wiring -------------------------------------------------------------------------------------
def input_partitions(settings: Settings) -> int:
    """Partitions of the input topic: the table and its changelog must be co-partitioned with it."""
    from pipeline.kafka.clients import make_admin

    metadata = make_admin(settings).list_topics(settings.topic_in, timeout=15)
    topic = metadata.topics.get(settings.topic_in)
    if topic is None or topic.error is not None or not topic.partitions:
        raise UserError(f"input topic {settings.topic_in} does not exist on {settings.kafka_bootstrap}; "
                        "create it with 'guardstream topics'")
    return len(topic.partitions)


def build_app(settings: Settings, partitions: int, store: DraftStore) -> tuple[Any, Any, Any, Any, Any]:
    """The faust app with its input topic, draft table (changelog folded into ``store``), verdict and DLQ topics."""
    import faust

    app = faust.App(
        settings.generative_group,
        **faust_kafka_settings(settings),   # broker, credentials, kafka_extra: as every other client's
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        topic_replication_factor=settings.replication_factor,
        topic_partitions=partitions,
        # Only for a group without committed offsets (docs/generative.md, "First start").
        consumer_auto_offset_reset=settings.gen_start_from,
        broker_commit_interval=1.0,
        # Rulings still running at shutdown are replayed after restart (their events are unacked).
        stream_wait_empty=False,
        producer_acks=-1,
        producer_max_request_size=CHANGELOG_RECORD_LIMIT,
        # One changelog record per delta: a few ms of linger lets them share produce requests
        # instead of one request each (a ruling's latency is tens of ms and more anyway).
        producer_linger=0.005,
        # A standby copy of another worker's drafts would be a second unbounded store; recovery
        # from the changelog is what restores a partition.
        table_standby_replicas=0,
    )
    in_topic = app.topic(settings.topic_in, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")
    table = make_draft_table(app, store, TABLE_NAME, partitions)
    verdicts = app.topic(settings.topic_verdicts, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")
    dlq = app.topic(settings.topic_dlq, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    return app, in_topic, table, verdicts, dlq


def connect_rebalances(app: Any, table: Any, ruler: ConversationRuler) -> None:
    """The ruler hears of revoked partitions (faust's signal) and of each completed table recovery."""

    async def revoked(_sender: Any, revoked: set[Any], **_: Any) -> None:
        ruler.on_partitions_revoked(revoked)

    async def recovered() -> None:
        # faust sets recovery.completed after seeking the input partitions to their committed offsets
        ruler.on_recovery_completed(app.tables.recovery.completed.wait)

    app.on_partitions_revoked.connect(revoked)
    table.on_recover(recovered)


async def serve(settings: Settings, metrics: GenMetrics, ops: OpsServer | None,
                stop: asyncio.Event | None = None) -> int:
    """Load the model, run the faust app until ``stop`` (or SIGTERM/SIGINT), shut down cleanly."""
    from pipeline.gen.checkpoint import load_gen_model

    check_limits(settings)
    faust_kafka_settings(settings)   # refuses kafka_extra that faust cannot apply, before the model loads
    if not settings.model:
        raise UserError("the generative worker needs --model DIR (a Qwen3Guard-Gen checkpoint or hub id); "
                        "make one with 'guardstream model init-random --arch gen --out DIR'")
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):   # not the main thread (in-process tests)
            loop.add_signal_handler(signum, stop.set)
    policies = load_policy_book(settings.policy_file or None, settings.default_policy)
    if settings.gen_threads > 0:
        import torch

        # Intra-op threads spin while they wait: on a host whose cores are busy, more threads than
        # free cores make small models many times slower, so this is tunable.
        torch.set_num_threads(settings.gen_threads)
    gen = await loop.run_in_executor(None, load_gen_model, settings.model, settings.device, settings.precision)
    moderator = await loop.run_in_executor(
        None, lambda: GenModerator(gen, context_tokens=settings.max_context_tokens))
    partitions = input_partitions(settings)
    store = DraftStore(draft_limits(settings))
    app, in_topic, table, verdicts, dlq = build_app(settings, partitions, store)
    batcher = RulingBatcher(moderator.rule, max_batch=settings.gen_max_batch, concurrency=settings.gen_concurrency,
                            max_wait_s=settings.max_batch_wait_ms / 1000, metrics=metrics)
    dlq_limit = await loop.run_in_executor(None, dlq_max_bytes, settings)
    ruler = ConversationRuler(table=table, store=store, verdicts_topic=verdicts, dlq_topic=dlq, batcher=batcher,
                              policies=policies, model_name=gen.name, settings=settings, metrics=metrics,
                              dlq_max_bytes=dlq_limit,
                              continuity=OffsetContinuity(KafkaLogProbe(settings),
                                                          lambda call: loop.run_in_executor(None, call),
                                                          from_log_start=settings.gen_start_from == "earliest"),
                              seek=lambda tp, offset: app.consumer.seek(tp, offset))

    connect_rebalances(app, table, ruler)

    async def moderate(stream: Any) -> None:
        async for event in stream.noack().events():
            await ruler.on_event(event)

    app.agent(in_topic, name="generative-moderate")(moderate)
    batcher.start()
    await app.start()
    if ops is not None:
        ops.set_ready(True)
    log.info("generative worker ready", extra={"model": gen.name, "partitions": partitions,
                                               "group": settings.generative_group, "device": gen.device})
    exit_code = 0
    sweep_every_s = max(0.5, min(60.0, settings.gen_draft_idle_s / 4))
    next_sweep = time.monotonic() + sweep_every_s
    stalled_check = StalledPartitionCheck(app, settings.topic_in, ruler)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=min(1.0, sweep_every_s))
        except TimeoutError:
            if app.crashed:
                exit_code = 1
                log.error("faust app crashed; stopping", extra={"reason": repr(getattr(app, "crash_reason", None))})
                break
            if ruler.write_failure is not None or ruler.handling_failure is not None:
                exit_code = EXIT_WRITE_FAILED
                break
            if time.monotonic() >= next_sweep:
                ruler.expire_idle(time.time())
                next_sweep = time.monotonic() + sweep_every_s
            stalled_check.maybe_start()
    if ops is not None:
        ops.set_ready(False)
    log.info("generative worker stopping")
    await stalled_check.stop()
    await ruler.wait_idle(SHUTDOWN_GRACE_S)
    await app.stop()
    await batcher.stop()
    return exit_code


class StalledPartitionCheck:
    """Runs ``ConversationRuler.reseek_stalled`` every few seconds, one run at a time, in the
    background (a probe of the log can take seconds), and never while faust rebalances, recovers
    its table or holds the flow of records: partitions are paused then on purpose."""

    EVERY_S = 2.0

    def __init__(self, app: Any, topic: str, ruler: ConversationRuler) -> None:
        self.app = app
        self.topic = topic
        self.ruler = ruler
        self._task: asyncio.Future[None] | None = None
        self._next = time.monotonic() + self.EVERY_S

    def _quiet(self) -> bool:
        app = self.app
        return (not getattr(app, "rebalancing", False) and app.tables.recovery.completed.is_set()
                and getattr(app.consumer, "flow_active", True))

    def maybe_start(self) -> None:
        if time.monotonic() < self._next or (self._task is not None and not self._task.done()):
            return
        self._next = time.monotonic() + self.EVERY_S
        if not self._quiet():
            return
        assigned = [tp for tp in self.app.consumer.assignment() if tp.topic == self.topic]
        self._task = asyncio.ensure_future(self._run(assigned))

    async def _run(self, assigned: list[Any]) -> None:
        try:
            await self.ruler.reseek_stalled(assigned, self._position)
        except Exception as exc:   # a probe or the consumer failed: the next run asks again
            log.warning("stalled-partition check failed", extra={"error": repr(exc)[:300]})

    async def _position(self, tp: Any) -> int | None:
        if not self._quiet() or tp not in self.app.consumer.assignment():
            return None
        position = await self.app.consumer.position(tp)
        return None if position is None else int(position)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


# faust, its `mode` library and aiokafka log ~40 INFO lines per start and rebalance.
NOISY_LOGGERS = ("faust", "mode", "aiokafka")


def quiet_libraries(log_level: str) -> None:
    """Libraries' INFO lines and progress bars only at DEBUG (docs/generative.md, "Quiet logs")."""
    import logging

    if log_level.upper() == "DEBUG":
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def run_generative_worker(settings: Settings) -> int:
    """Run the generative worker until SIGTERM/SIGINT; returns the process exit code."""
    configure_logging(settings.log_level)
    quiet_libraries(settings.log_level)
    metrics = GenMetrics()
    ops = start_ops_server(settings.metrics_port, metrics.registry) if settings.metrics_port else None
    try:
        return asyncio.run(serve(settings, metrics, ops))
    finally:
        if ops is not None:
            ops.stop()
