"""Chaos: three stream workers, random SIGKILLs, a broker restart, a Redis crash and the
rebalances all of that causes, during 200 conversations. The deduplicated verdict set equals a
fault-free run's; no input is dead-lettered.

Needs a stack the test session started (``make test`` does; on a shared stack it is skipped):
Kafka and Redis are restarted under the workers.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.conversations import Conversation
from tests.fixtures.stack import StackEndpoints, produce_deltas
from tests.worker.conftest import chunked_deltas, expected_verdicts, renamed
from tests.worker.harness import (
    WorkerProcess,
    assert_same_verdicts,
    dedup,
    dlq_records,
    input_lag,
    settled_verdicts,
)
from workers.stream.worker import EXIT_DEPENDENCY

CONVERSATIONS = 200
SLOTS = 3
SLOW = {"max_batch_tokens": 16, "gap_timeout_ms": 60_000}


class Fleet:
    """Three worker slots; a slot's worker keeps its name (``worker_instance``) across restarts,
    so a restarted worker fences its killed predecessor's open transaction at once."""

    def __init__(self, settings: Settings, start_worker: Any) -> None:
        self.settings = settings
        self.start_worker = start_worker
        self.workers: dict[int, WorkerProcess] = {}
        self.down: set[int] = set()   # killed on purpose, not restarted until start()
        self.starts = 0

    def start(self, slot: int) -> None:
        self.down.discard(slot)
        self.starts += 1
        self.workers[slot] = self.start_worker(self.settings, f"slot{slot}-{self.starts}",
                                               worker_instance=f"chaos{slot}", **SLOW)

    def kill(self, rng: random.Random) -> int:
        slot = rng.randrange(SLOTS)
        self.workers[slot].kill()
        self.down.add(slot)
        return slot

    def supervise(self) -> None:
        """What a supervisor does: restart a worker that exited 75; any other exit is a failure."""
        for slot, worker in list(self.workers.items()):
            if slot not in self.down and not worker.alive():
                code = worker.proc.returncode if worker.proc else None
                assert code == EXIT_DEPENDENCY, f"worker {slot} exited {code}:\n{worker.tail()}"
                self.start(slot)

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.supervise()
            time.sleep(0.5)

    def wait_caught_up(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.supervise()
            if input_lag(self.settings) == 0:
                return
            time.sleep(1.0)
        raise AssertionError(f"not caught up after {timeout_s}s:\n" +
                             "\n".join(w.tail(15) for w in self.workers.values()))


def test_kills_restarts_and_rebalances_give_the_fault_free_verdicts(
    settings: Settings, stack: StackEndpoints, start_worker: Any, tiny_onnx_dir: Path,
    sample_conversations: list[Conversation],
) -> None:
    stack._owned()  # skips on a shared stack: it restarts Kafka and Redis
    settings = settings.replace(**SLOW)
    rng = random.Random(2026)
    conversations = renamed(sample_conversations, copies=CONVERSATIONS // len(sample_conversations) + 1)
    deltas = chunked_deltas(conversations[:CONVERSATIONS], seed=17)
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, deltas))
    parts = [deltas[i * len(deltas) // 6:(i + 1) * len(deltas) // 6] for i in range(6)]

    fleet = Fleet(settings, start_worker)
    for slot in range(SLOTS):
        fleet.start(slot)
    for worker in fleet.workers.values():
        worker.wait_for_log("stream worker consuming")   # kills below hit running workers
    produce_deltas(settings, parts[0])
    fleet.wait(rng.uniform(3, 8))

    killed = fleet.kill(rng)                      # a crash: its partitions move (rebalance) ...
    produce_deltas(settings, parts[1])
    fleet.wait(rng.uniform(2, 5))
    fleet.start(killed)                           # ... and back when it returns

    stack.restart_kafka(hard=True)                # the broker crashes and comes back
    produce_deltas(settings, parts[2])
    fleet.wait(rng.uniform(3, 8))

    fleet.kill(rng)
    fleet.kill(rng)                               # maybe the same slot twice: kill() on a dead one is a no-op
    produce_deltas(settings, parts[3])
    for slot in sorted(fleet.down):
        fleet.start(slot)
    fleet.wait(rng.uniform(2, 5))

    stack.restart_redis(hard=True)                # Redis crashes; what its AOF had not synced is gone
    produce_deltas(settings, parts[4])
    fleet.wait(rng.uniform(2, 5))
    fleet.kill(rng)
    produce_deltas(settings, parts[5])
    for slot in sorted(fleet.down):
        fleet.start(slot)

    fleet.wait_caught_up(600)
    for worker in fleet.workers.values():
        assert worker.stop() == 0
    found = settled_verdicts(settings, len(expected), timeout_s=120)
    assert_same_verdicts(dedup(found), expected,
                         [(r.reason, r.source_partition, r.source_offset) for r in dlq_records(settings)])
    assert dlq_records(settings) == []
