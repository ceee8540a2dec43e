"""Faults that are not the input's: a broken engine, a full, refusing or vanished Redis, an
unreachable Kafka. Nothing is dead-lettered, nothing is committed while they last, health says
so, and the worker resumes by itself (or exits 75 for its supervisor) once they are over."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.conversations import Conversation
from pipeline.errors import UserError
from tests.fixtures.stack import produce_deltas
from tests.worker.conftest import chunked_deltas, expected_verdicts, renamed
from tests.worker.harness import (
    REPO,
    assert_fault_free_outcome,
    assert_same_verdicts,
    dedup,
    dlq_records,
    input_lag,
    settings_env,
    settled_verdicts,
    wait_until,
    worker_settings,
)
from tests.worker.inprocess import BreakableEngine, InProcessWorker, ThrowawayRedis, judge_backlog
from workers.stream.worker import EXIT_DEPENDENCY

FAULTS = "guardstream_stream_dependency_faults_total"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(tmp_path / "redis").start()
    yield server
    server.kill()


def test_a_broken_engine_dead_letters_nothing_commits_nothing_and_the_worker_resumes_or_exits_75(
    settings: Settings, tiny_onnx_dir: Path, sample_conversations: list[Conversation]
) -> None:
    from pipeline.onnx.engine import OnnxStreamEngine

    settings = worker_settings(settings, tiny_onnx_dir, health_grace_s=1)
    deltas = chunked_deltas(renamed(sample_conversations), seed=5)
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, deltas))
    engine = BreakableEngine(OnnxStreamEngine.from_dir(tiny_onnx_dir, warmup=False))
    engine.broken.set()
    produce_deltas(settings, deltas)

    # Short retry budget: the worker gives up with 75, having committed and dead-lettered nothing.
    first = InProcessWorker(settings.replace(fault_retry_s=2), engine).start()
    assert first.join(60) == EXIT_DEPENDENCY
    assert first.metric(FAULTS, dependency="engine") >= 2
    assert input_lag(settings) == len(deltas)

    # Long retry budget: unhealthy while it lasts, then the same input judged as if nothing happened.
    second = InProcessWorker(settings.replace(fault_retry_s=600), engine).start()
    wait_until(lambda: not second.health.alive()[0], 60, "/healthz to fail while the engine fails")
    assert "engine" in second.health.alive()[1]
    assert input_lag(settings) == len(deltas)
    engine.broken.clear()
    wait_until(lambda: input_lag(settings) == 0, 120, "the backlog to be judged once the engine works")
    assert second.health.alive()[0]
    assert second.stop() == 0
    assert_same_verdicts(dedup(settled_verdicts(settings, len(expected))), expected)
    assert dlq_records(settings) == []


def test_redis_eviction_policies_are_refused_unless_allowed(
    settings: Settings, tiny_onnx_dir: Path, own_redis: ThrowawayRedis
) -> None:
    settings = worker_settings(settings, tiny_onnx_dir, redis_url=own_redis.url, health_grace_s=1)
    own_redis.client().config_set("maxmemory-policy", "allkeys-lru")
    with pytest.raises(UserError, match=r"maxmemory-policy allkeys-lru.*noeviction"):
        InProcessWorker(settings)
    InProcessWorker(settings.replace(redis_allow_eviction=True))  # builds


def test_a_full_then_vanished_redis_is_waited_out_and_state_ends_as_in_a_fault_free_run(
    settings: Settings, tiny_onnx_dir: Path, sample_conversations: list[Conversation], own_redis: ThrowawayRedis
) -> None:
    settings = worker_settings(settings, tiny_onnx_dir, redis_url=own_redis.url, health_grace_s=1,
                               max_batch_tokens=6)
    deltas = chunked_deltas(renamed(sample_conversations, copies=2), seed=7)
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, deltas))
    quarter = len(deltas) // 4
    parts = [deltas[:quarter], deltas[quarter:2 * quarter], deltas[2 * quarter:3 * quarter], deltas[3 * quarter:]]
    admin = own_redis.client()
    worker = InProcessWorker(settings).start()
    produce_deltas(settings, parts[0])
    wait_until(lambda: input_lag(settings) == 0, 120, "the first part to be judged")

    # Full: Redis refuses writes ("OOM command not allowed"); the worker waits, reports, resumes.
    admin.config_set("maxmemory", "1")
    produce_deltas(settings, parts[1])
    wait_until(lambda: not worker.health.alive()[0], 60, "/healthz to fail while Redis refuses writes")
    assert worker.metric(FAULTS, dependency="redis") > 0
    admin.config_set("maxmemory", "0")
    wait_until(lambda: input_lag(settings) == 0, 120, "the worker to resume once Redis accepts writes")
    wait_until(lambda: worker.health.alive()[0], 30, "/healthz to recover")

    # Gone (crash, no persistence: every state is lost): not ready, then back by itself, rebuilt by replay.
    own_redis.kill()
    produce_deltas(settings, parts[2])
    wait_until(lambda: not worker.health.ready()[0] and not worker.health.alive()[0], 60,
               "/readyz and /healthz to fail with Redis down")
    own_redis.start()
    wait_until(lambda: input_lag(settings) == 0, 180, "the worker to resume once Redis is back")
    assert worker.alive()
    wait_until(lambda: worker.health.ready()[0], 30, "/readyz to recover")

    # Stop requested while Redis is down: obeyed within seconds, nothing committed meanwhile.
    own_redis.kill()
    produce_deltas(settings, parts[3])
    wait_until(lambda: worker.metric(FAULTS, dependency="redis") > 0 and not worker.health.ready()[0], 60,
               "the worker to notice Redis is gone")
    lag = input_lag(settings)
    started = time.monotonic()
    assert worker.stop(timeout_s=15) == 0
    assert time.monotonic() - started < 10
    assert input_lag(settings) == lag > 0

    own_redis.start()
    last = InProcessWorker(settings).start()
    wait_until(lambda: input_lag(settings) == 0, 180, "a new worker to finish the input")
    assert last.stop() == 0
    assert_same_verdicts(dedup(settled_verdicts(settings, len(expected))), expected)
    assert dlq_records(settings) == []


@pytest.mark.parametrize("broken", ["kafka", "redis"])
def test_an_unreachable_dependency_at_startup_is_one_line_naming_it(
    settings: Settings, tiny_onnx_dir: Path, broken: str
) -> None:
    changes: dict[str, object] = {"health_grace_s": 1, "metrics_port": 0}
    if broken == "kafka":
        changes["kafka_bootstrap"] = "127.0.0.1:1"
    else:
        changes["redis_url"] = "redis://127.0.0.1:1/0"
    env = settings_env(worker_settings(settings, tiny_onnx_dir, **changes))
    done = subprocess.run([sys.executable, "-m", "workers.stream"], env={**os.environ, **env}, cwd=REPO,
                          capture_output=True, timeout=120)
    out = (done.stdout + done.stderr).decode()
    assert done.returncode == EXIT_DEPENDENCY, out
    assert "Traceback" not in out and "_TIMED_OUT" not in out
    errors = [line for line in out.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1 and "127.0.0.1:1" in errors[0] and "guardstream up" in errors[0], out


def test_an_engine_fault_while_a_batch_commits_lands_that_batch_before_judging_again(
    settings: Settings, tiny_onnx_dir: Path, sample_conversations: list[Conversation]
) -> None:
    from pipeline.onnx.engine import OnnxStreamEngine

    # Small batches from a backlog: each is judged on the states of the one still committing. A
    # failed attempt may have changed those states in place, so they are dropped; the batch in flight
    # must land (its states reach Redis) before the next one is judged again from Redis.
    settings = worker_settings(settings, tiny_onnx_dir, max_inflight_deltas=4)
    deltas = chunked_deltas(renamed(sample_conversations), seed=6)
    expected = dedup(expected_verdicts(settings, tiny_onnx_dir, deltas))
    # Short outages of two calls: the step, and the probe that tells a broken engine from bad input.
    outages = frozenset(call for start in range(8, 200, 8) for call in (start, start + 1))
    engine = BreakableEngine(OnnxStreamEngine.from_dir(tiny_onnx_dir, warmup=False), fail_calls=outages)
    produce_deltas(settings, deltas)

    worker = judge_backlog(settings, InProcessWorker(settings, engine))
    assert engine.failed_calls >= 6
    assert worker.metric(FAULTS, dependency="engine") >= 3
    assert worker.metric("guardstream_stream_overlapped_batches_total") > 0
    assert_fault_free_outcome(settings, expected)
