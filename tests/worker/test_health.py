"""What /healthz and /readyz answer (no Kafka needed)."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry

from pipeline.ops.server import OpsServer
from workers.stream.health import KAFKA, REDIS, WorkerHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_alive_fails_when_a_dependency_keeps_failing_past_the_grace_period() -> None:
    clock = Clock()
    health = WorkerHealth(stall_s=100, grace_s=10, clock=clock)
    health.failing(REDIS, "Connection refused")
    clock.now += 9
    assert health.alive()[0]
    clock.now += 2
    ok, why = health.alive()
    assert not ok and "redis" in why and "Connection refused" in why
    health.answered(REDIS)
    assert health.alive()[0]


def test_alive_fails_when_the_loop_holds_work_without_progress() -> None:
    clock = Clock()
    health = WorkerHealth(stall_s=30, grace_s=10, clock=clock)
    clock.now += 1000                    # idle for long: fine, nothing pending
    assert health.alive()[0]
    health.busy()
    clock.now += 29
    assert health.alive()[0]
    clock.now += 2
    ok, why = health.alive()
    assert not ok and "no progress" in why
    health.progressed()
    assert health.alive()[0]


def test_ready_needs_the_group_recovered_partitions_and_answering_dependencies() -> None:
    health = WorkerHealth(stall_s=30, grace_s=10)
    assert not health.ready()[0]
    health.subscribed()
    assert health.ready()[0]
    health.set_recovering(2)
    assert "recovering 2" in health.ready()[1]
    health.set_recovering(0)
    health.failing(KAFKA, "all brokers down")
    assert not health.ready()[0]
    health.answered(KAFKA)
    assert health.ready() == (True, "ready")


def test_the_ops_server_answers_with_the_checks_and_their_reason() -> None:
    health = WorkerHealth(stall_s=30, grace_s=0)
    server = OpsServer(0, CollectorRegistry(), host="127.0.0.1", alive_check=health.alive,
                       ready_check=health.ready).start()
    try:
        server.set_ready(True)
        health.subscribed()
        base = f"http://127.0.0.1:{server.port}"
        assert urllib.request.urlopen(base + "/healthz").status == 200
        assert urllib.request.urlopen(base + "/readyz").status == 200
        health.failing(REDIS, "Connection refused")
        for path in ("/healthz", "/readyz"):
            try:
                urllib.request.urlopen(base + path)
                raise AssertionError(f"{path} answered 200 with Redis down")
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
                assert b"redis" in exc.read()
    finally:
        server.stop()
