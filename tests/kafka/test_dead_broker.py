"""A broker where nothing listens: one clear error per command, no flood of librdkafka lines."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import load_settings
from pipeline.conversations import Conversation, Message, write_conversations
from pipeline.kafka.clients import RateLimitedLog, make_producer

DEAD = "127.0.0.1:1"   # nothing listens on port 1
REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout_s: float = 60) -> tuple[int, list[str], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=REPO, check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return done.returncode, lines, time.monotonic() - started


def test_send_to_a_dead_broker_says_so_once_and_fails(tmp_path: Path) -> None:
    path = tmp_path / "convs.jsonl"
    write_conversations(path, [Conversation("c1", None, (Message("user", "hello there " * 20),))])
    rc, lines, seconds = _cli("send", "--input", str(path), "--kafka-bootstrap", DEAD, "--no-progress")
    assert rc != 0
    assert len(lines) == 1, lines
    assert DEAD in lines[0] and "guardstream up" in lines[0]
    assert seconds < 30


def test_watch_on_a_dead_broker_says_so_once_and_fails() -> None:
    rc, lines, seconds = _cli("watch", "--kafka-bootstrap", DEAD, "--timeout", "20")
    assert rc != 0
    assert len(lines) == 1, lines
    assert DEAD in lines[0] and "guardstream up" in lines[0]
    assert seconds < 20


def test_librdkafka_repeating_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    producer = make_producer(load_settings().replace(kafka_bootstrap=DEAD), **{"reconnect.backoff.ms": 10,
                                                                               "reconnect.backoff.max.ms": 50})
    with caplog.at_level(logging.DEBUG, logger="guardstream.librdkafka"):
        producer.produce("any", key="k", value=b"v")
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            producer.poll(0.1)
    refused = [r for r in caplog.records if "Connection refused" in r.getMessage()]
    assert 1 <= len(refused) <= 2, [r.getMessage() for r in caplog.records]


def test_rate_limited_log_passes_one_line_per_kind_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("test.ratelimited")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    log = RateLimitedLog(logger, interval_s=30, clock=lambda: now[0])
    for ms in range(100):
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", f"connect failed after {ms}ms")
    log.log(logging.ERROR, "another kind of line")
    now[0] = 31.0
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "connect failed after 5ms")
    assert seen[0] == "FAIL [rdkafka#producer-1] connect failed after 0ms"
    assert seen[1] == "another kind of line"
    assert len(seen) == 3
    assert seen[2].startswith("FAIL [rdkafka#producer-1] connect failed after 5ms (99 similar lines")
