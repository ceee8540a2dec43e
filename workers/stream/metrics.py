"""The stream worker's Prometheus metrics, in a private registry (two workers in one process never share)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.dlq import reason_class
from schemas.messages import DlqRecord

if TYPE_CHECKING:
    from workers.stream.processing import BatchOutcome

log = logging.getLogger("guardstream.stream")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.deltas = Counter("guardstream_stream_deltas", "Input deltas consumed", registry=r)
        self.tokens = Counter("guardstream_stream_tokens", "Tokens scored by the model", registry=r)
        self.verdicts = Counter("guardstream_stream_verdicts", "Verdicts produced", ["kind", "risk", "action"],
                                registry=r)
        self.dlq = Counter("guardstream_stream_dlq", "Inputs sent to the dead-letter topic", ["reason"], registry=r)
        self.replayed = Counter("guardstream_stream_replayed_deltas",
                                "Deltas re-applied from the log to rebuild Redis state", registry=r)
        self.batch_deltas = Histogram("guardstream_stream_batch_deltas", "Deltas per micro-batch",
                                      buckets=_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("guardstream_stream_batch_tokens", "Tokens scored per micro-batch",
                                      buckets=_SIZE_BUCKETS, registry=r)
        self.batch_conversations = Histogram("guardstream_stream_batch_conversations",
                                             "Conversations scored per micro-batch", buckets=_SIZE_BUCKETS,
                                             registry=r)
        self.batch_seconds = Histogram("guardstream_stream_batch_seconds", "Wall time of one micro-batch",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.verdict_latency = Histogram("guardstream_stream_verdict_latency_seconds",
                                         "Delta ts_ms (producer clock) to verdict commit",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.redis_seconds = Histogram("guardstream_stream_redis_seconds", "Redis round trips", ["op"],
                                       buckets=_REDIS_BUCKETS, registry=r)
        self.consumer_lag = Gauge("guardstream_stream_consumer_lag",
                                  "Input records after this worker's last committed offset, per owned partition",
                                  ["topic", "partition"], registry=r)
        self.recovering_partitions = Gauge("guardstream_stream_recovering_partitions",
                                           "Assigned partitions paused while their Redis state is rebuilt",
                                           registry=r)
        self.faults = Counter("guardstream_stream_dependency_faults",
                              "Failed attempts at a step because a dependency failed (retried, never DLQ'd)",
                              ["dependency"], registry=r)
        self.assigned_partitions = Gauge("guardstream_stream_assigned_partitions", "Input partitions owned",
                                         registry=r)
        self.kv_cache_lookups = Counter("guardstream_stream_kv_cache_lookups",
                                        "Engine requests (one per conversation per step)", registry=r)
        self.kv_cache_hits = Counter("guardstream_stream_kv_cache_hits",
                                     "Engine requests whose conversation had a KV cache (hit rate = hits/lookups)",
                                     registry=r)
        self.kv_cache_bytes = Gauge("guardstream_stream_kv_cache_bytes", "Bytes held by the KV cache", registry=r)
        self.transactions_aborted = Counter("guardstream_stream_transactions_aborted",
                                            "Kafka transactions aborted (batch re-read)", registry=r)
        self.state_conflicts = Counter("guardstream_stream_state_conflicts",
                                       "Redis watermark mismatches that triggered recovery", registry=r)
        self.overlapped_batches = Counter("guardstream_stream_overlapped_batches",
                                          "Micro-batches judged while the previous one's transaction committed",
                                          registry=r)
        self.batches_rejudged = Counter("guardstream_stream_batches_rejudged",
                                        "Judged micro-batches thrown away and read again because the batch "
                                        "before them did not land (aborted, or Redis not as expected)", registry=r)

    def observe_redis(self, op: str, seconds: float) -> None:
        self.redis_seconds.labels(op=op).observe(seconds)

    def observe_lag(self, stats: dict[str, Any], committed: Mapping[tuple[str, int], int]) -> None:
        """Lag per owned partition: its end (the last stable offset: what a read-committed reader can
        see) minus the offset this worker committed in its last transaction. librdkafka's own
        ``consumer_lag`` counts from offsets stored in the consumer, which a transactional worker
        never stores, so it would report lag forever."""
        for (topic, partition), offset in committed.items():
            pdata = ((stats.get("topics") or {}).get(topic, {}).get("partitions") or {}).get(str(partition))
            if not pdata:
                continue
            end = pdata.get("ls_offset", -1)
            if not isinstance(end, int) or end < 0:
                end = pdata.get("hi_offset", -1)
            if isinstance(end, int) and end >= 0:
                self.consumer_lag.labels(topic=topic, partition=str(partition)).set(max(0, end - offset))

    def forget_partition(self, topic: str, partition: int) -> None:
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(topic, str(partition))


def parse_kafka_stats(stats_json: str) -> dict[str, Any] | None:
    try:
        stats = json.loads(stats_json)
    except ValueError:
        return None
    return stats if isinstance(stats, dict) else None


def brokers_up(stats: dict[str, Any]) -> bool:
    """Whether librdkafka holds a live connection to at least one real broker (not the bootstrap alias)."""
    brokers = stats.get("brokers") or {}
    return any(isinstance(b, dict) and b.get("nodeid", -1) >= 0 and b.get("state") == "UP"
               for b in brokers.values())


def observe_batch(metrics: StreamMetrics, outcome: BatchOutcome, seconds: float) -> None:
    """What one committed micro-batch did."""
    m = metrics
    m.deltas.inc(outcome.deltas)
    m.tokens.inc(outcome.tokens_scored)
    m.kv_cache_lookups.inc(outcome.cache_lookups)
    m.kv_cache_hits.inc(outcome.cache_hits)
    m.batch_deltas.observe(outcome.deltas)
    m.batch_tokens.observe(outcome.tokens_scored)
    m.batch_conversations.observe(outcome.conversations_scored)
    m.batch_seconds.observe(seconds)
    for verdict in outcome.verdicts:
        m.verdicts.labels(kind=verdict.kind, risk=verdict.risk, action=verdict.action).inc()
        if verdict.latency_ms is not None:
            m.verdict_latency.observe(max(0, verdict.latency_ms) / 1000.0)
    for rec in outcome.dlq:
        m.dlq.labels(reason=reason_class(rec.reason)).inc()
    _log_dlq(outcome.dlq)


def _log_dlq(records: Sequence[DlqRecord]) -> None:
    for rec in records:
        log.info("input sent to the DLQ", extra={
            "reason": rec.reason, "source_topic": rec.source_topic, "source_partition": rec.source_partition,
            "source_offset": rec.source_offset, "conversation_id": rec.conversation_id})
