"""``guardstream eval --through-kafka``: the labelled set through a live stream worker.

Every sample becomes a conversation with a run-unique id, cut into TokenDeltas (the chosen
chunking) and published to the input topic; the verdict topic is read from its end (pinned before
the first send) until every sample has the final verdict of its judged message. Outcomes come from
the flag and final verdicts exactly as in the simulated-stream path (pipeline.eval.runs), so the metrics are
the same numbers; added: the verdicts' ``latency_ms`` (verdict time minus the stamped send time of
the delta that completed it, measured by the worker), which includes any backlog the send rate
creates. The worker applies its own policy file; ``--tenant`` sets the samples' tenant.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from pipeline.chunking import Chunker
from pipeline.clock import now_ms
from pipeline.config import Settings
from pipeline.conversations import Conversation
from pipeline.deltas import conversation_deltas
from pipeline.errors import UserError
from pipeline.eval.dataset import EvalSample
from pipeline.eval.metrics import Outcome, percentiles
from pipeline.eval.runs import SampleRun, context_of, outcome_from_verdicts
from pipeline.kafka.readers import verdict_reader
from pipeline.tokens.text import TextTokenizer
from schemas.messages import Verdict, decode_verdict, encode


@dataclass
class KafkaResult:
    runs: list[SampleRun]
    latency: dict[str, dict[str, float | None]] = field(default_factory=dict)
    duplicates: int = 0     # verdicts seen twice (at-least-once delivery), ignored


def run_through_kafka(settings: Settings, samples: Sequence[EvalSample], text: TextTokenizer, chunker: Chunker,
                      tenant: str | None, *, rate: float = 0.0, timeout_s: float = 300.0,
                      advance: Callable[[], None] = lambda: None) -> KafkaResult:
    from pipeline.kafka.clients import make_producer

    prefix = uuid.uuid4().hex[:8]
    by_id: dict[str, EvalSample] = {}
    for sample in samples:
        conversation = Conversation(f"{prefix}-{sample.conversation.conversation_id}"[:256], tenant,
                                    sample.conversation.messages)
        by_id[conversation.conversation_id] = EvalSample(sample.sample_id, conversation, sample.label,
                                                         sample.unsafe_start, sample.unsafe_end)
    if len(by_id) != len(samples):
        raise UserError("two samples share a conversation id after prefixing; give samples unique ids")
    consumer = verdict_reader(settings, "eval")
    producer = make_producer(settings)
    failures: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    try:
        started = time.monotonic()
        sent = 0
        for sample in by_id.values():
            for delta in conversation_deltas(sample.conversation, chunker, end=True):
                if rate > 0 and (wait := started + sent / rate - time.monotonic()) > 0:
                    time.sleep(wait)
                value = encode(msgspec.structs.replace(delta, ts_ms=now_ms()))
                while True:
                    try:
                        producer.produce(settings.topic_in, key=delta.conversation_id, value=value,
                                         on_delivery=on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.1)
                producer.poll(0)
                sent += 1
        if producer.flush(60) or failures:
            raise UserError(f"could not publish every delta to {settings.topic_in} ({failures[:1] or 'timeout'}); "
                            f"is Kafka reachable at {settings.kafka_bootstrap}?")
        verdicts: dict[str, list[Verdict]] = {cid: [] for cid in by_id}
        seen: set[str] = set()
        waiting = set(by_id)
        duplicates = 0
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            try:
                verdict = decode_verdict(msg.value() or b"")
            except Exception:   # another producer's record: not ours to judge
                continue
            if verdict.conversation_id not in by_id:
                continue
            if verdict.verdict_id in seen:
                duplicates += 1
                continue
            seen.add(verdict.verdict_id)
            verdicts[verdict.conversation_id].append(verdict)
            sample = by_id[verdict.conversation_id]
            if verdict.kind == "final" and verdict.message_index == sample.judged_index:
                waiting.discard(verdict.conversation_id)
                advance()
        if waiting:
            raise UserError(f"{len(waiting)} of {len(by_id)} samples got no final verdict within {timeout_s:.0f} s; "
                            f"is a stream worker consuming {settings.topic_in} and writing {settings.topic_verdicts}?")
    finally:
        consumer.close()

    runs = []
    for cid, sample in by_id.items():
        context = context_of(text, sample, settings.max_context_tokens)
        if context is None:
            runs.append(SampleRun(sample, Outcome("safe"), [], judged=False, verdicts=verdicts[cid]))
            continue
        outcome = outcome_from_verdicts(verdicts[cid], sample.judged_index, context.scored_positions)
        runs.append(SampleRun(sample, outcome, context.token_ids, verdicts=verdicts[cid]))
    every = [v for vs in verdicts.values() for v in vs]
    latency = {kind: percentiles([float(v.latency_ms) for v in every if v.kind == kind and v.latency_ms is not None])
               for kind in ("flag", "final")}
    return KafkaResult(runs, latency, duplicates)
