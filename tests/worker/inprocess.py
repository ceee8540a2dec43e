"""A stream worker in a thread of the test process (its health, metrics and engine in reach), a
model engine that can be broken on demand, and a throwaway redis-server the test owns."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from pipeline.config import Settings
from pipeline.engine.types import FeedRequest, HeadOutputs
from tests.worker.harness import input_lag, wait_until
from workers.stream.app import build_worker
from workers.stream.health import WorkerHealth
from workers.stream.metrics import StreamMetrics
from workers.stream.worker import ProducerFactory


class BreakableEngine:
    """The real engine, failing every call while ``broken`` is set (as a dead CUDA context would), and
    the calls numbered in ``fail_calls`` (1 is the first call: a transient fault at a chosen moment)."""

    def __init__(self, inner: Any, fail_calls: frozenset[int] = frozenset()) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.broken = threading.Event()
        self.fail_calls = fail_calls
        self.calls = 0
        self.failed_calls = 0

    @property
    def cache(self) -> Any:
        return getattr(self.inner, "cache", None)

    def run(self, requests: Sequence[FeedRequest]) -> list[HeadOutputs]:
        self.calls += 1
        if self.broken.is_set() or self.calls in self.fail_calls:
            self.failed_calls += 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return list(self.inner.run(requests))

    def evict(self, key: str) -> None:
        self.inner.evict(key)


class InProcessWorker:
    def __init__(self, settings: Settings, engine: Any = None, producer_factory: ProducerFactory | None = None) -> None:
        self.metrics = StreamMetrics()
        self.health = WorkerHealth(settings.health_stall_s, settings.health_grace_s)
        self.worker = build_worker(settings, self.metrics, engine=engine, health=self.health,
                                   producer_factory=producer_factory)
        self.stop_event = threading.Event()
        self.code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.code = self.worker.run(self.stop_event)
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def start(self) -> InProcessWorker:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        self.stop_event.set()
        return self.join(timeout_s)

    def join(self, timeout_s: float) -> int | None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"worker still running after {timeout_s}s"
        if self.error is not None:
            raise self.error
        return self.code

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else float(value)


def judge_backlog(settings: Settings, worker: InProcessWorker) -> InProcessWorker:
    """Start ``worker``, wait until the input it was given is committed (or it died), stop it: exit 0."""
    worker.start()
    wait_until(lambda: input_lag(settings) == 0 or not worker.alive(), 180, "the input to be judged")
    assert worker.stop() == 0
    return worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayRedis:
    """A redis-server of the test's own (no persistence): crash it, restart it, fill it up."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        binary = shutil.which("redis-server")
        assert binary, "redis-server not installed"
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ThrowawayRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        client.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)
