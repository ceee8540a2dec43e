"""Several stream worker processes on one machine: each its own ORT session and group member, one outcome.

Running N workers per machine (or per GPU) is a deployment choice (docs/deploy.md): the consumer
group splits the partitions between them, and every verdict must be the one a single fault-free run
gives, with none published twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.conversations import Conversation
from tests.fixtures.stack import produce_deltas
from tests.worker.conftest import chunked_deltas, expected_verdicts, renamed
from tests.worker.harness import (
    assert_same_verdicts,
    dedup,
    duplicates,
    settled_verdicts,
    wait_caught_up,
    wait_until,
)


def _owned_partitions(worker: Any) -> set[str]:
    """The partitions the worker owns now, replaying its assignment and revocation log lines in order."""
    owned: set[str] = set()
    for line in worker.log_lines():
        partitions = set(line.get("partitions") or [])
        if line.get("msg") == "partitions assigned":
            owned |= partitions
        elif line.get("msg") == "partitions revoked":
            owned -= partitions
    return owned


def _split_between(workers: list[Any], partitions: int) -> bool:
    owned = [_owned_partitions(w) for w in workers]
    every = set().union(*owned)
    return all(owned) and len(every) == partitions and sum(map(len, owned)) == partitions


def test_two_workers_on_one_machine_share_the_partitions_and_give_the_single_run_verdicts(
    settings: Settings, start_worker: Any, tiny_onnx_dir: Path, sample_conversations: list[Conversation]
) -> None:
    deltas = chunked_deltas(renamed(sample_conversations, copies=2), seed=5)
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, deltas))
    # One ORT thread each: N workers on a machine split its cores instead of all spinning on all of them.
    workers = [start_worker(settings, name=f"several-{n}", worker_instance=f"several-{n}", engine_threads=1)
               for n in range(2)]
    # The group settles on each partition owned by exactly one of them, both owning some.
    wait_until(lambda: _split_between(workers, settings.partitions), 180, "the two workers to split the partitions")

    produce_deltas(settings, deltas)
    wait_caught_up(settings, workers=workers)
    found = settled_verdicts(settings, len(expected))
    for worker in workers:
        assert worker.stop() == 0
    assert_same_verdicts(dedup(found), expected)
    assert duplicates(found) == []
