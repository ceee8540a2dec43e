"""The dashboard's Prometheus metrics, in a private registry (a dashboard mounted in the gateway and a
standalone one in the same process never share)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class DashboardMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records = Counter("guardstream_dashboard_records", "Records read by the dashboard, by topic and outcome",
                               ["topic", "outcome"], registry=r)
        self.clients = Gauge("guardstream_dashboard_clients", "Browsers connected to the live feed", registry=r)
        self.clients_dropped = Counter("guardstream_dashboard_clients_dropped",
                                       "Live-feed clients disconnected because they read too slowly", registry=r)
        self.clients_refused = Counter("guardstream_dashboard_clients_refused",
                                       "Live-feed connections refused at the client limit", registry=r)
        self.conversations = Gauge("guardstream_dashboard_conversations", "Conversations kept in memory",
                                   registry=r)
        self.evicted = Gauge("guardstream_dashboard_conversations_evicted",
                             "Conversations dropped from memory (least recently updated first) since start",
                             registry=r)
        self.history_scans = Counter("guardstream_dashboard_history_scans",
                                     "Verdict-history replays from the topic, by outcome", ["outcome"], registry=r)
