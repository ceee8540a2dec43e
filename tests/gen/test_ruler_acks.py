"""When the generative worker acks an input event, and what a recovery rules on its own.

ConversationRuler against stand-ins for the Kafka writes (changelog, verdicts, DLQ) and for the
model, with faust's own TopicPartition: each test steps through an order of events that a crash or
a rebalance produces and checks which events may be acked. On the real Kafka the same paths run in
test_worker_kafka.py (SIGKILL mid-run) and test_worker_recovery_kafka.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from pipeline.config import Settings
from pipeline.gen.moderator import GenRuling
from pipeline.gen.parse import Ruling
from pipeline.gen.render import ModerationRequest
from pipeline.policy import load_policy_book
from pipeline.state.keys import conversation_key
from schemas.messages import TokenDelta, decode_verdict, encode
from workers.generative.app import ConversationRuler, draft_limits
from workers.generative.assembly import ChunkOp, RuledOp, encode_op
from workers.generative.drafts import DraftStore, record_key
from workers.generative.metrics import GenMetrics

TOPIC = "guard.in"
TP0 = TP(TOPIC, 0)


class Event:
    """What the agent gets from faust: key, value, message (topic, partition, offset, tp), ack()."""

    def __init__(self, offset: int, delta: TokenDelta | None = None, *, value: bytes | None = None) -> None:
        self.key = delta.conversation_id.encode() if delta is not None else b"k"
        self.value = encode(delta) if delta is not None else value
        self.message = SimpleNamespace(topic=TOPIC, partition=TP0.partition, offset=offset, tp=TP0)
        self.acked = False

    def ack(self) -> None:
        self.acked = True


class Writes:
    """A topic or table whose writes are delivered at once (or fail, with ``error``)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes | None]] = []
        self.error: Exception | None = None

    def _delivery(self, key: bytes | None, value: bytes | None) -> asyncio.Future[None]:
        if self.error is not None:
            raise self.error
        self.sent.append((key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send(self, *, key: bytes | None, value: bytes, force: bool = False) -> asyncio.Future[None]:
        return self._delivery(key, value)

    def send_changelog(self, partition: int, key: bytes, value: bytes | None, **_: Any) -> asyncio.Future[None]:
        return self._delivery(key, value)


class Model:
    """Rulings that land only when the test releases them."""

    def __init__(self) -> None:
        self.waiting: list[tuple[ModerationRequest, asyncio.Future[GenRuling]]] = []

    def submit(self, request: ModerationRequest) -> asyncio.Future[GenRuling]:
        future: asyncio.Future[GenRuling] = asyncio.get_running_loop().create_future()
        self.waiting.append((request, future))
        return future

    def release_all(self) -> None:
        for request, future in self.waiting:
            if not future.done():
                future.set_result(_safe(request))
        self.waiting.clear()


def _safe(request: ModerationRequest) -> GenRuling:
    refusal = False if request.mode == "response" else None
    return GenRuling(Ruling("safe", (), refusal), {"Safe": 1.0, "Unsafe": 0.0, "Controversial": 0.0}, "Safety: Safe", 0)


def _ruler(settings: Settings) -> tuple[ConversationRuler, DraftStore, Writes, Model]:
    store = DraftStore(draft_limits(settings))
    verdicts, model = Writes(), Model()
    ruler = ConversationRuler(table=Writes(), store=store, verdicts_topic=verdicts, dlq_topic=Writes(),
                              batcher=model, policies=load_policy_book(None, settings.default_policy),  # type: ignore[arg-type]
                              model_name="gen-test", settings=settings, metrics=GenMetrics())
    return ruler, store, verdicts, model


def _delta(index: int, role: str, text: str = "hello", conversation: str = "c1") -> TokenDelta:
    return TokenDelta(conversation_id=conversation, message_index=index, role=role,  # type: ignore[arg-type]
                      seq=0, text=text, final=True, tenant="acme")


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _ruled_ids(verdicts: Writes) -> set[str]:
    return {decode_verdict(value).verdict_id for _, value in verdicts.sent if value is not None}


def test_a_recovered_complete_message_is_ruled_without_waiting_for_an_event() -> None:
    """The changelog holds an assistant message complete but unruled (its worker died before the
    ruling landed) while guard.in has nothing left to replay for the conversation: the recovery
    alone must rule it, or the conversation waits silently for an event that never comes."""
    async def scenario() -> None:
        settings = Settings()
        ruler, store, verdicts, model = _ruler(settings)
        key = conversation_key("acme", "c1").encode()
        records: list[ChunkOp | RuledOp] = [ChunkOp(0, "user", 0, "question", True, "acme"), RuledOp(0),
                                            ChunkOp(1, "assistant", 0, "answer", True)]
        for number, op in enumerate(records):
            store.apply_record(0, record_key(key, number), encode_op(op), 1.0)

        ruler.on_recovery_completed()
        await _settle()
        model.release_all()
        await ruler.wait_idle(5)

        assert _ruled_ids(verdicts) == {"c1/1/generative/final/0"}

    asyncio.run(scenario())


def test_an_event_waits_for_a_ruling_it_needs_that_another_event_started() -> None:
    """After a rebalance the event that started a ruling may never be acked (its ack order was
    dropped with the revoked partition); the replayed event that needs the same ruling must not
    be acked before that ruling is delivered, or the commit passes a message without its ruling."""
    async def scenario() -> None:
        settings = Settings()
        ruler, _, verdicts, model = _ruler(settings)
        await ruler.on_event(Event(0, _delta(0, "user")))
        await _settle()
        assert model.waiting    # the ruling of message 0 is running

        ruler.on_partitions_revoked({TP0})    # ... and the partition comes back: offset 0 is read again
        replayed = Event(0, _delta(0, "user"))
        await ruler.on_event(replayed)
        await _settle()
        assert not replayed.acked, "acked while the ruling it needs is still running"

        model.release_all()
        await ruler.wait_idle(5)
        assert replayed.acked
        assert _ruled_ids(verdicts) == {"c1/0/generative/final/0"}

    asyncio.run(scenario())


def test_events_of_a_revoked_assignment_are_never_acked() -> None:
    """An ack from before a rebalance would land in the new assignment's bookkeeping."""
    async def scenario() -> None:
        settings = Settings()
        ruler, _, _, model = _ruler(settings)
        old = Event(0, _delta(0, "user"))
        await ruler.on_event(old)
        ruler.on_partitions_revoked({TP0})
        model.release_all()
        await ruler.wait_idle(5)
        assert not old.acked

    asyncio.run(scenario())


def test_an_event_whose_handling_fails_holds_back_later_acks() -> None:
    """A failure that is not the input's (here the DLQ write raises) must not let the next events
    of the partition be acked past it: the worker stops so that the event is redone."""
    async def scenario() -> None:
        settings = Settings()
        ruler, _, _, model = _ruler(settings)
        assert isinstance(ruler.dlq_topic, Writes)
        ruler.dlq_topic.error = RuntimeError("broker gone")
        failing = Event(0, value=b"{not json")
        later = Event(1, _delta(0, "user"))

        await ruler.on_event(failing)
        await ruler.on_event(later)
        await _settle()
        model.release_all()
        await ruler.wait_idle(5)

        assert ruler.handling_failure is not None
        assert ruler.metrics.registry.get_sample_value("guardstream_gen_handling_failures_total") == 1
        assert not failing.acked and not later.acked

    asyncio.run(scenario())


def test_acks_follow_offsets_when_rulings_land_out_of_order() -> None:
    async def scenario() -> None:
        settings = Settings()
        ruler, _, _, model = _ruler(settings)
        first = Event(0, _delta(0, "user", conversation="a"))
        second = Event(1, _delta(0, "user", conversation="b"))
        await ruler.on_event(first)
        await ruler.on_event(second)
        await _settle()
        _, (request_b, ruling_b) = model.waiting
        ruling_b.set_result(_safe(request_b))
        await _settle()
        assert not first.acked and not second.acked    # the second waits for the first
        model.release_all()
        await ruler.wait_idle(5)
        assert first.acked and second.acked

    asyncio.run(scenario())
