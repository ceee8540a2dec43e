"""The stream worker's Prometheus metrics, in a private registry (two workers in one process never share)."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.consumer_lag = Gauge("guardstream_stream_consumer_lag", "Messages behind the partition end",
                                  ["topic", "partition"], registry=r)
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

    def observe_redis(self, op: str, seconds: float) -> None:
        self.redis_seconds.labels(op=op).observe(seconds)

    def observe_engine(self, engine: Any) -> None:
        """Bytes in the engine's KV cache, when it has one (the ONNX engine's ``cache.nbytes``)."""
        used = getattr(getattr(engine, "cache", None), "nbytes", None)
        if isinstance(used, int | float):
            self.kv_cache_bytes.set(used)

    def observe_kafka_stats(self, stats_json: str) -> None:
        """librdkafka statistics callback: consumer lag per partition."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        for topic, tdata in (stats.get("topics") or {}).items():
            for part, pdata in (tdata.get("partitions") or {}).items():
                lag = pdata.get("consumer_lag")
                if part == "-1" or lag is None or lag < 0 or pdata.get("fetch_state") == "none":
                    continue
                self.consumer_lag.labels(topic=topic, partition=part).set(lag)
