"""Prometheus metrics of the generative worker, on a private registry (two workers in one test process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class GenMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.deltas = Counter("guardstream_gen_deltas_total", "TokenDeltas consumed", registry=r)
        self.dlq = Counter("guardstream_gen_dlq_total", "Records sent to the DLQ", ["kind"], registry=r)
        self.messages_completed = Counter("guardstream_gen_messages_completed_total",
                                          "Messages assembled complete", ["role"], registry=r)
        self.rulings = Counter("guardstream_gen_rulings_total", "Rulings emitted", ["risk", "action"], registry=r)
        self.truncated = Counter("guardstream_gen_truncated_total",
                                 "Rulings on text shortened to fit the context", registry=r)
        self.ruling_failures = Counter("guardstream_gen_ruling_failures_total", "Rulings that failed", registry=r)
        self.batch_size = Histogram("guardstream_gen_batch_size", "Requests per model call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.model_seconds = Histogram("guardstream_gen_model_seconds", "Model time per batch",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.ruling_seconds = Histogram("guardstream_gen_ruling_seconds",
                                        "Message complete -> verdict delivered", buckets=_LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("guardstream_gen_inflight_rulings", "Rulings queued or running", registry=r)
        self.conversations = Gauge("guardstream_gen_conversations", "Conversations held in the table", registry=r)
        self.changelog_records = Counter("guardstream_gen_changelog_records_total",
                                         "Draft changes appended to the changelog", registry=r)
        self.changelog_bytes = Counter("guardstream_gen_changelog_bytes_total",
                                       "Key and value bytes of the draft changes appended to the changelog", registry=r)
        self.changelog_skipped = Gauge("guardstream_gen_changelog_skipped_records",
                                       "Changelog records skipped in recovery (unknown format or not applicable)",
                                       registry=r)
        self.write_failures = Counter("guardstream_gen_write_failures_total",
                                      "Kafka writes (changelog, verdicts, DLQ) not delivered; the worker exits",
                                      registry=r)
        self.handling_failures = Counter("guardstream_gen_handling_failures_total",
                                         "Events whose handling raised (not the input's fault); the worker exits",
                                         registry=r)
        self.draft_elided = Counter("guardstream_gen_draft_elided_messages_total",
                                    "Messages completed past gen_max_message_chars (middle elided)", registry=r)
        self.expired = Counter("guardstream_gen_expired_conversations_total",
                               "Conversations dropped after gen_draft_idle_s without deltas", registry=r)
        self.expired_unfinished = Counter("guardstream_gen_expired_unfinished_messages_total",
                                          "Messages unfinished or never ruled in expired conversations", registry=r)
