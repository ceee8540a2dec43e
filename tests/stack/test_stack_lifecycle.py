"""``guardstream up`` / ``down`` on a private state directory and ports (the shared stack is untouched)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.config import load_settings
from pipeline.errors import UserError
from pipeline.kafka import ensure_topics
from pipeline.stack import LocalStack
from pipeline.stack.probes import port_open
from pipeline.stack.process import PidFile, pid_alive, wait_exit
from pipeline.stack.tools import require_java, require_program
from tests.fixtures.stack import consume_all, produce
from workers.cli import main


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], LocalStack]]:
    kafka_port, controller_port, redis_port = _free_ports(3)
    state_dir = tmp_path_factory.mktemp("stack")
    # Reuse the shared stack's resolved jars so this test needs no Maven run of its own.
    shared_lib = LocalStack.from_settings(load_settings()).kafka.lib_dir
    if (shared_lib / ".kafka-version").is_file():
        (state_dir / "kafka").mkdir()
        (state_dir / "kafka" / "lib").symlink_to(shared_lib)
    flags = ["--state-dir", str(state_dir), "--kafka-port", str(kafka_port),
             "--kafka-controller-port", str(controller_port), "--redis-port", str(redis_port)]
    stack = LocalStack.from_settings(load_settings().replace(
        state_dir=str(state_dir), kafka_port=kafka_port, kafka_controller_port=controller_port,
        redis_port=redis_port))
    yield flags, stack
    stack.down()


def test_up_starts_both_then_reports_them_already_running(
    private_stack: tuple[list[str], LocalStack], capsys: pytest.CaptureFixture[str]
) -> None:
    flags, stack = private_stack
    assert main(["up", *flags]) == 0
    first = capsys.readouterr().out
    assert "redis  started" in first and "kafka  started" in first
    pids = stack.running()
    assert stack.answers()
    assert main(["up", *flags]) == 0
    assert "already running" in capsys.readouterr().out
    assert stack.running() == pids


def test_restarts_keep_kafka_records_and_redis_keys(private_stack: tuple[list[str], LocalStack]) -> None:
    _, stack = private_stack
    stack.up()
    settings = load_settings().replace(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                                       topic_in="r.in", topic_verdicts="r.verdicts", topic_dlq="r.dlq", partitions=1)
    ensure_topics(settings)
    produce(settings, "r.in", [("k", b"survives")])
    client = redis.Redis.from_url(stack.redis_url)
    client.set("guardstream:test", "kept")
    old = stack.running()
    stack.restart_kafka(hard=True)  # SIGKILL: a broker crash
    stack.restart_redis()
    assert stack.running()["kafka"] != old["kafka"]
    assert [r.value for r in consume_all(settings, "r.in", n=1)] == [b"survives"]
    assert redis.Redis.from_url(stack.redis_url).get("guardstream:test") == b"kept"


def test_down_stops_exactly_its_processes_then_is_a_no_op(
    private_stack: tuple[list[str], LocalStack], capsys: pytest.CaptureFixture[str]
) -> None:
    flags, stack = private_stack
    stack.up()
    pids = stack.running()
    assert main(["down", *flags]) == 0
    out = capsys.readouterr().out
    assert "kafka  stopped" in out and "redis  stopped" in out
    for pid in pids.values():
        assert pid is not None
        assert not pid_alive(pid)
    for port in (stack.kafka.port, stack.kafka.controller_port, stack.redis.port):
        assert not port_open("127.0.0.1", port)
    assert main(["down", *flags]) == 0
    assert capsys.readouterr().out.count("not running") == 2


def test_up_from_another_state_dir_uses_the_running_services_and_down_leaves_them(
    private_stack: tuple[list[str], LocalStack], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, stack = private_stack
    stack.up()
    pids = stack.running()
    other = [*flags[2:], "--state-dir", str(tmp_path / "other")]
    assert main(["up", *other]) == 0
    assert capsys.readouterr().out.count("already answering") == 2
    assert main(["down", *other]) == 0
    assert capsys.readouterr().out.count("not running") == 2
    assert stack.running() == pids and stack.answers()


def test_down_never_signals_a_process_that_reused_a_recorded_pid(
    private_stack: tuple[list[str], LocalStack], capsys: pytest.CaptureFixture[str]
) -> None:
    flags, stack = private_stack
    stack.down()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # A PID file naming the stranger's PID but another start time: what a reused PID looks like.
        stack.kafka.pid_file.path.parent.mkdir(parents=True, exist_ok=True)
        stack.kafka.pid_file.path.write_text(f"{stranger.pid} 1\n")
        assert PidFile(stack.kafka.pid_file.path).read() is None
        assert main(["down", *flags]) == 0
        assert "kafka  not running" in capsys.readouterr().out
        assert stranger.poll() is None
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait()


def test_a_process_whose_main_thread_exited_counts_as_alive_until_its_threads_end() -> None:
    # The JVM's shape during shutdown: the leader is a zombie while shutdown hooks still run.
    code = ("import ctypes, threading, time\n"
            "threading.Thread(target=time.sleep, args=(2,)).start()\n"
            "ctypes.CDLL(None).pthread_exit(None)")
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while _state(process.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(process.pid) == "Z"
        assert pid_alive(process.pid)
        assert wait_exit(process.pid, 30)
        assert not pid_alive(process.pid)
    finally:
        process.kill()
        process.wait()


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[0]


def test_missing_programs_are_user_errors_that_say_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    for program, package in (("redis-server", "redis-server"), ("mvn", "maven")):
        with pytest.raises(UserError, match=f"apt-get install -y {package}"):
            require_program(program)
    with pytest.raises(UserError, match="openjdk-17"):
        require_java()
