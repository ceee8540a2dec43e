"""What /healthz and /readyz of a stream worker answer, from what its loop observed.

Alive (``/healthz``) is about whether restarting the process could help: the loop is stuck (no
completed step for ``stall_s`` while it has work in hand), or a dependency (Kafka, Redis, the
model engine) has kept failing for longer than ``grace_s``. Ready (``/readyz``) is about whether
the worker is doing its job now: it has joined its group, every assigned partition is recovered,
and Kafka and Redis answer. See docs/guarantees.md ("Health").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

KAFKA = "kafka"
REDIS = "redis"
ENGINE = "engine"


class WorkerHealth:
    def __init__(self, stall_s: float, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._stall_s = stall_s
        self._grace_s = grace_s
        self._clock = clock
        self._lock = threading.Lock()
        self._progress_at = clock()
        self._busy_since: float | None = None
        self._failing_since: dict[str, float] = {}
        self._last_error: dict[str, str] = {}
        self._subscribed = False
        self._recovering = 0

    # --- what the loop reports ---------------------------------------------------------
    def busy(self) -> None:
        """A step with work in hand started (records, a recovery, a retry)."""
        with self._lock:
            if self._busy_since is None:
                self._busy_since = self._clock()

    def progressed(self) -> None:
        """A step finished: its work is committed (or there was none)."""
        with self._lock:
            self._progress_at = self._clock()
            self._busy_since = None

    def failing(self, dependency: str, error: str) -> None:
        with self._lock:
            self._failing_since.setdefault(dependency, self._clock())
            self._last_error[dependency] = error[:300]

    def answered(self, dependency: str) -> None:
        with self._lock:
            self._failing_since.pop(dependency, None)

    def is_failing(self, dependency: str) -> bool:
        with self._lock:
            return dependency in self._failing_since

    def subscribed(self, value: bool = True) -> None:
        with self._lock:
            self._subscribed = value

    def set_recovering(self, partitions: int) -> None:
        with self._lock:
            self._recovering = partitions

    # --- what the probes ask -------------------------------------------------------------
    def alive(self) -> tuple[bool, str]:
        now = self._clock()
        with self._lock:
            for dep, since in sorted(self._failing_since.items()):
                if now - since > self._grace_s:
                    return False, f"{dep} failing for {now - since:.0f}s: {self._last_error.get(dep, '')}"
            if self._busy_since is not None and now - max(self._busy_since, self._progress_at) > self._stall_s:
                return False, f"no progress for {now - self._progress_at:.0f}s with work pending"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            if not self._subscribed:
                return False, "not in the consumer group yet"
            if self._recovering:
                return False, f"recovering {self._recovering} partition(s)"
            down = sorted(d for d in self._failing_since if d in (KAFKA, REDIS))
            if down:
                return False, f"{', '.join(down)} not answering"
        return True, "ready"
