"""The generative worker: Qwen3Guard-Gen rulings on complete turns, as a faust-streaming app.

Data flow: its own consumer group (``settings.generative_group``, also the faust app id) reads
``guard.in``; deltas are assembled per conversation in a changelog-backed table (memory store,
recovered from the changelog topic on restart; :mod:`workers.generative.assembly`); each
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
- After SIGKILL the table comes back from its changelog (possibly ahead of the committed
  offset) and the uncommitted events are replayed. Applying a delta is idempotent; a replayed
  event re-triggers every complete message that is not marked ruled, so a ruling that was lost
  is computed again. "Ruled" marks are folded into the table when the next event of that
  conversation is processed, so a message is ruled again only if its marker had not landed yet.
- Re-rulings are identical: greedy decoding of the same rendered text (readiness and context
  depend only on the conversation's content, see assembly), and ``verdict_id`` is
  ``{conversation}/{message}/generative/final/0``, so consumers dedupe on it. Scores are rounded
  to 3 decimals: a ruling recomputed in another batch shape differs only by float noise (~1e-6).
- A conversation's "end" waits for its in-flight rulings before the table key is deleted, so a
  replay after a crash can never rebuild a partial conversation whose rulings were not delivered.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.config import Settings
from pipeline.dlq import DEFAULT_MESSAGE_MAX_BYTES, dlq_max_bytes, dlq_record, encode_fitting, reason_class
from pipeline.errors import UserError
from pipeline.gen.moderator import GenModerator, GenRuling
from pipeline.gen.render import ModerationRequest
from pipeline.intake import InputLimits, accept
from pipeline.logging import configure_logging, get_logger
from pipeline.ops.ports import start_ops_server
from pipeline.ops.server import OpsServer
from pipeline.policy import PolicyBook, load_policy_book
from pipeline.state.keys import conversation_key
from schemas.messages import DlqRecord, MessageError, TokenDelta, bounded, encode
from workers.generative.assembly import (
    AssemblyError,
    ConversationDraft,
    apply_delta,
    decode_draft,
    encode_draft,
    ready_for_ruling,
    stranded_messages,
)
from workers.generative.batcher import RulingBatcher
from workers.generative.metrics import GenMetrics
from workers.generative.verdicts import generative_verdict

WORKER_NAME = "generative"
TABLE_NAME = "conversations"
SHUTDOWN_GRACE_S = 20.0

log = get_logger("guardstream.generative")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _AckEntry:
    event: Any
    done: bool = False


class ConversationRuler:
    """Per-event logic of the faust agent: assemble, schedule rulings, emit verdicts, ack."""

    def __init__(self, *, table: Any, verdicts_topic: Any, dlq_topic: Any, batcher: RulingBatcher,
                 policies: PolicyBook, model_name: str, settings: Settings, metrics: GenMetrics,
                 dlq_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES) -> None:
        self.table = table
        self.verdicts_topic = verdicts_topic
        self.dlq_topic = dlq_topic
        self.batcher = batcher
        self.policies = policies
        self.model_name = model_name
        self.settings = settings
        self.metrics = metrics
        self.limits = InputLimits.of(settings)
        self.dlq_max_bytes = dlq_max_bytes
        self._inflight: dict[tuple[bytes, int], asyncio.Future[None]] = {}
        self._delivered: dict[bytes, set[int]] = defaultdict(set)   # delivered, not yet marked in the table
        self._capacity = asyncio.Semaphore(max(1, settings.gen_max_batch * settings.gen_concurrency * 4))
        self._ackers: set[asyncio.Future[None]] = set()
        self._ack_order: dict[Any, deque[_AckEntry]] = defaultdict(deque)

    # --- the agent's entry point ----------------------------------------------------------------
    async def on_event(self, event: Any) -> None:
        self.metrics.deltas.inc()
        try:
            delta = accept(_bytes_or_none(event.key), _bytes_or_none(event.value), self.limits)
        except MessageError as exc:
            await self._dead_letter(event, str(exc), None)
            self._ack_when_done(event, [])
            return
        # The table key is the shared injective state key (pipeline.state.keys): tenants never share a draft.
        key = conversation_key(delta.tenant, delta.conversation_id).encode("utf-8")
        draft = decode_draft(self.table.get(key))
        changed = self._mark_delivered(key, draft)
        if delta.type == "end":
            await self._end_conversation(event, key, delta, draft)
            return
        try:
            applied = apply_delta(draft, delta)
        except AssemblyError as exc:
            stored = [self._store(event, key, draft)] if changed else []
            await self._dead_letter(event, str(exc), delta.conversation_id)
            self._ack_when_done(event, stored)
            return
        if applied and delta.message_index is not None and draft.messages[delta.message_index].complete:
            self.metrics.messages_completed.labels(role=delta.role).inc()
        pending = [self._store(event, key, draft)] if changed or applied else []
        self.metrics.conversations.set(len(self.table))
        pending += await self._schedule(event, key, delta, draft)
        self._ack_when_done(event, pending)

    # --- the table -----------------------------------------------------------------------------
    # faust's commit-time producer flush gives up after 0.1 s with messages still buffered, so a
    # busy worker can commit an offset whose changelog write never landed (seen in tests: a chunk
    # vanished across a SIGKILL). Writes therefore go through send_changelog, whose future says
    # when the write is durable, and the event is acked only after that.
    def _store(self, event: Any, key: bytes, draft: ConversationDraft) -> Any:
        value = encode_draft(draft)
        self.table.data[key] = value
        return self.table.send_changelog(event.message.partition, key, value)

    def _forget(self, event: Any, key: bytes) -> Any:
        self.table.data.pop(key, None)
        return self.table.send_changelog(event.message.partition, key, None, value_serializer="raw")

    # --- rulings -----------------------------------------------------------------------------
    async def _schedule(self, event: Any, key: bytes, delta: TokenDelta,
                        draft: ConversationDraft) -> list[asyncio.Future[None]]:
        scheduled: list[asyncio.Future[None]] = []
        for index, request in ready_for_ruling(draft).items():
            # Already in flight: an earlier event of this conversation (same partition, lower
            # offset) holds the commit back until it is delivered, so this event need not wait.
            if (key, index) in self._inflight or index in self._delivered.get(key, ()):
                continue
            await self._capacity.acquire()
            self.metrics.inflight.inc()
            future = asyncio.ensure_future(self._rule_and_emit(event, key, delta, draft, index, request))
            self._inflight[(key, index)] = future
            future.add_done_callback(functools.partial(self._on_ruling_done, key, index))
            scheduled.append(future)
        return scheduled

    def _on_ruling_done(self, key: bytes, index: int, _future: asyncio.Future[None]) -> None:
        self._inflight.pop((key, index), None)
        self._capacity.release()
        self.metrics.inflight.dec()

    async def _rule_and_emit(self, event: Any, key: bytes, delta: TokenDelta, draft: ConversationDraft, index: int,
                             request: ModerationRequest) -> None:
        started = time.perf_counter()
        conversation_id = delta.conversation_id
        try:
            ruling: GenRuling = await self.batcher.submit(request)
        except Exception as exc:
            self.metrics.ruling_failures.inc()
            log.error("ruling failed", extra={"conversation_id": conversation_id, "message_index": index,
                                              "error": repr(exc)})
            await self._dead_letter(event, f"generative ruling failed for message {index}: {exc}", conversation_id)
            return
        verdict = generative_verdict(
            conversation_id=conversation_id, message_index=index, role=draft.messages[index].role,
            tenant=draft.tenant, ruling=ruling, policies=self.policies, model=self.model_name,
            now_ms=_now_ms(), sent_ms=delta.ts_ms,
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

    def _ack_when_done(self, event: Any, pending: Sequence[Any]) -> None:
        """Ack ``event`` once ``pending`` is done, and never before the partition's earlier events.

        In-order acks per partition: faust 0.15's commit logic can step over a single unacked
        offset when the one after it is acked (and checks nothing while the committed offset is
        0), so out-of-order acks could commit past a message whose ruling never landed.
        """
        entry = _AckEntry(event)
        queue = self._ack_order[event.message.tp]
        queue.append(entry)
        if not pending:
            entry.done = True
            self._release_acks(queue)
            return

        async def ack_later() -> None:
            results = await asyncio.gather(*pending, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                # Not delivered: the event and everything after it in its partition stay unacked,
                # so the offset is never committed past it and the next worker redoes the work.
                log.error("write not delivered; its event stays uncommitted",
                          extra={"error": repr(failures[0]), "offset": event.message.offset})
                return
            entry.done = True
            self._release_acks(queue)

        task = asyncio.ensure_future(ack_later())
        self._ackers.add(task)
        task.add_done_callback(self._ackers.discard)

    @staticmethod
    def _release_acks(queue: deque[_AckEntry]) -> None:
        while queue and queue[0].done:
            queue.popleft().event.ack()

    async def _end_conversation(self, event: Any, key: bytes, delta: TokenDelta, draft: ConversationDraft) -> None:
        # Rulings still running must land before the state goes: a replay after a crash could not
        # rebuild the conversation from the events that are left.
        waiting = [f for (k, _), f in list(self._inflight.items()) if k == key]
        waiting += await self._schedule(event, key, delta, draft)
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
        for index in stranded_messages(draft):
            await self._dead_letter(event, f"assistant message {index} got no ruling: a lower message index "
                                           "never arrived complete", delta.conversation_id)
        self._delivered.pop(key, None)
        pending = [self._forget(event, key)] if self.table.get(key) is not None else []
        self.metrics.conversations.set(len(self.table))
        self._ack_when_done(event, pending)

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
                                        _now_ms(), key=key, conversation_id=conversation_id))
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


def faust_credentials(settings: Settings) -> Any:
    import ssl

    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_location or None)
        if settings.kafka_ssl_certificate_location:
            context.load_cert_chain(settings.kafka_ssl_certificate_location, settings.kafka_ssl_key_location or None)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                 mechanism=settings.kafka_sasl_mechanism or "PLAIN", ssl_context=context)


def build_app(settings: Settings, partitions: int) -> tuple[Any, Any, Any, Any, Any]:
    """The faust app with its input topic, table, verdict topic and DLQ topic."""
    import faust

    app = faust.App(
        settings.generative_group,
        broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),
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
    )
    in_topic = app.topic(settings.topic_in, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")
    # bytes key and value types make faust use the raw codec for the changelog.
    table = app.Table(TABLE_NAME, default=None, partitions=partitions, key_type=bytes, value_type=bytes)
    verdicts = app.topic(settings.topic_verdicts, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")
    dlq = app.topic(settings.topic_dlq, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    return app, in_topic, table, verdicts, dlq


async def serve(settings: Settings, metrics: GenMetrics, ops: OpsServer | None,
                stop: asyncio.Event | None = None) -> int:
    """Load the model, run the faust app until ``stop`` (or SIGTERM/SIGINT), shut down cleanly."""
    from pipeline.gen.checkpoint import load_gen_model

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
    app, in_topic, table, verdicts, dlq = build_app(settings, partitions)
    batcher = RulingBatcher(moderator.rule, max_batch=settings.gen_max_batch, concurrency=settings.gen_concurrency,
                            max_wait_s=settings.max_batch_wait_ms / 1000, metrics=metrics)
    dlq_limit = await loop.run_in_executor(None, dlq_max_bytes, settings)
    ruler = ConversationRuler(table=table, verdicts_topic=verdicts, dlq_topic=dlq, batcher=batcher,
                              policies=policies, model_name=gen.name, settings=settings, metrics=metrics,
                              dlq_max_bytes=dlq_limit)

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
    crashed = False
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            if app.crashed:
                crashed = True
                log.error("faust app crashed; stopping", extra={"reason": repr(getattr(app, "crash_reason", None))})
                break
    if ops is not None:
        ops.set_ready(False)
    log.info("generative worker stopping")
    await ruler.wait_idle(SHUTDOWN_GRACE_S)
    await app.stop()
    await batcher.stop()
    return 1 if crashed else 0


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
