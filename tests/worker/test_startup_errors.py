"""A stream worker's common start-up mistakes: one line that names the fix, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.kafka import delete_topics, ensure_topics
from pipeline.ops.ports import free_port, readyz_status
from schemas.messages import TokenDelta
from tests.fixtures.stack import produce_deltas
from tests.worker.harness import REPO, WorkerProcess, settings_env, wait_until, worker_settings

pytestmark = pytest.mark.timeout(600)


def test_metrics_port_in_use_is_one_line_naming_the_flag(settings: Settings, tiny_onnx_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = settings_env(worker_settings(settings, tiny_onnx_dir))
        done = subprocess.run([sys.executable, "-m", "workers.cli", "worker", "stream", "--metrics-port", str(port)],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip() and '"level"' not in line]
    assert done.returncode == 2
    assert len(lines) == 1, done.stderr
    assert "--metrics-port" in lines[0] and str(port) in lines[0] and "Traceback" not in done.stderr


def test_missing_topics_say_run_topics_and_the_worker_stays_unready_until_they_exist(
    settings: Settings, tiny_onnx_dir: Path, tmp_path: Path
) -> None:
    prefix = f"late{uuid.uuid4().hex[:8]}"
    late = settings.replace(topic_in=f"{prefix}.in", topic_verdicts=f"{prefix}.verdicts", topic_dlq=f"{prefix}.dlq")
    port = free_port()
    worker = WorkerProcess(worker_settings(late, tiny_onnx_dir, metrics_port=port), tmp_path).start()
    try:
        wait_until(lambda: any("guardstream topics" in str(line.get("msg")) for line in worker.log_lines()),
                   120, "the missing-topics line", worker)
        time.sleep(3)
        assert readyz_status(port) == 503
        assert sum("guardstream topics" in str(line.get("msg")) for line in worker.log_lines()) == 1
        ensure_topics(late)
        wait_until(lambda: readyz_status(port) == 200, 60, "readiness once the topics exist", worker)
    finally:
        worker.stop()
        delete_topics(late, [late.topic_in, late.topic_verdicts, late.topic_dlq])


def test_a_fenced_worker_stops_with_one_line(settings: Settings, tiny_onnx_dir: Path, tmp_path: Path) -> None:
    shared = worker_settings(settings, tiny_onnx_dir, worker_instance="same-name")
    first = WorkerProcess(shared, tmp_path, "first").start()
    second = None
    try:
        first.wait_for_log("stream worker consuming")
        second = WorkerProcess(shared, tmp_path, "second").start()
        second.wait_for_log("stream worker consuming")
        deadline = time.monotonic() + 120
        n = 0
        while first.alive() and time.monotonic() < deadline:
            produce_deltas(shared, [TokenDelta(conversation_id=f"fence-{n}-{i}", message_index=0, role="user",
                                               seq=0, text="hello", final=True) for i in range(16)])
            n += 1
            time.sleep(1)
        assert not first.alive(), "the fenced worker went on"
        assert first.proc is not None and first.proc.returncode == 2
        text = first.log_path.read_text(errors="replace")
        assert "Traceback" not in text
        own = [line for line in text.splitlines() if "guardstream.librdkafka" not in line]
        assert not any("_FENCED" in line for line in own)
        assert sum("fenced this one" in line and "--worker-instance" in line for line in text.splitlines()) == 1
    finally:
        if second is not None:
            second.stop()
        first.stop()
