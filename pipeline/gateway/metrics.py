"""The gateway's Prometheus metrics, in a private registry (two gateways in one process never share)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("guardstream_gateway_requests", "Chat completion requests by how they ended",
                                ["stream", "outcome"], registry=r)
        self.blocks = Counter("guardstream_gateway_blocks", "Blocked prompts and replies",
                              ["stage", "category", "tenant"], registry=r)
        self.fail_closed = Counter("guardstream_gateway_fail_closed",
                                   "Requests refused because Kafka or the workers did not answer in time",
                                   ["stage", "tenant"], registry=r)
        self.fail_open = Counter("guardstream_gateway_fail_open",
                                 "Unjudged text passed because Kafka or the workers did not answer in time "
                                 "(tenants that opted in)", ["stage", "tenant"], registry=r)
        self.in_flight = Gauge("guardstream_gateway_in_flight", "Chat completions in flight", registry=r)
        self.prompt_seconds = Histogram("guardstream_gateway_prompt_check_seconds",
                                        "Publishing the prompt to its verdict: latency added before the upstream",
                                        buckets=_SECONDS, registry=r)
        self.first_release_seconds = Histogram("guardstream_gateway_first_release_seconds",
                                               "Request start to the first released reply text",
                                               buckets=_SECONDS, registry=r)
        self.final_hold_seconds = Histogram("guardstream_gateway_final_hold_seconds",
                                            "Upstream's last token to the reply's end: latency added at the end",
                                            buckets=_SECONDS, registry=r)
