"""The local stack: one Kafka and one Redis on loopback, started and stopped together.

``up`` and ``down`` are idempotent and touch only the processes whose PID files live in this
state directory. The restart functions exist for fault-injection tests (broker or Redis restart
while workers run); they keep the data, so a restart looks like a crash and recovery in production.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Settings, state_path
from pipeline.stack.kafka import LocalKafka
from pipeline.stack.redis import LocalRedis


@dataclass(frozen=True)
class StackEvent:
    """One line of what ``up``/``down`` did, for the CLI to print."""

    service: str
    action: str  # started | already running | already answering (not ours) | stopped | not running
    detail: str


@dataclass(frozen=True)
class LocalStack:
    kafka: LocalKafka
    redis: LocalRedis

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalStack:
        root = state_path(settings)
        return cls(
            kafka=LocalKafka(root, settings.kafka_port, settings.kafka_controller_port),
            redis=LocalRedis(root, settings.redis_port),
        )

    @property
    def state_dir(self) -> Path:
        return self.kafka.state_dir

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down/restart across processes (two test sessions starting the stack at once)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / "stack.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def up(self) -> list[StackEvent]:
        with self._locked():
            return self._up()

    def down(self) -> list[StackEvent]:
        with self._locked():
            return self._down()

    def _up(self) -> list[StackEvent]:
        # Redis first: it starts in milliseconds, and a Kafka failure then leaves a usable Redis.
        events = []
        services = (("redis", self.redis, self.redis.url), ("kafka", self.kafka, self.kafka.bootstrap))
        for name, service, where in services:
            already = service.pid()
            if already is None and service.answers():
                # Another state dir's stack, a system service or a container: usable, but not ours to stop.
                events.append(StackEvent(name, "already answering", f"{where} (not started from {self.state_dir})"))
                continue
            pid = service.start()
            action = "already running" if already is not None else "started"
            events.append(StackEvent(name, action, f"{where} (pid {pid}, log {service.log_file})"))
        return events

    def _down(self) -> list[StackEvent]:
        # Kafka first: a broker shutting down may still flush; Redis has no dependency on it.
        events = []
        for name, service in (("kafka", self.kafka), ("redis", self.redis)):
            pid = service.pid()
            stopped = service.stop()
            events.append(StackEvent(name, "stopped" if stopped else "not running",
                                     f"pid {pid}" if pid is not None else str(service.pid_file.path)))
        return events

    def running(self) -> dict[str, int | None]:
        return {"kafka": self.kafka.pid(), "redis": self.redis.pid()}

    def answers(self) -> bool:
        return self.redis.answers() and self.kafka.answers()

    # --- fault injection --------------------------------------------------------------------
    def restart_kafka(self, *, hard: bool = False) -> int:
        """Stop (SIGKILL when ``hard``: a crash) and start the broker again on the same data."""
        with self._locked():
            self.kafka.stop(hard=hard)
            return self.kafka.start()

    def restart_redis(self, *, hard: bool = False) -> int:
        """Stop (SIGKILL when ``hard``) and start Redis again; the AOF brings the data back."""
        with self._locked():
            self.redis.stop(hard=hard)
            return self.redis.start()


def restart_kafka(settings: Settings, *, hard: bool = False) -> int:
    return LocalStack.from_settings(settings).restart_kafka(hard=hard)


def restart_redis(settings: Settings, *, hard: bool = False) -> int:
    return LocalStack.from_settings(settings).restart_redis(hard=hard)
