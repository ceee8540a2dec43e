"""Stream workers as real subprocesses (so SIGKILL is a real crash) and ways to wait on them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline.config import Settings, settings_environment
from pipeline.kafka.lag import committed_lag
from schemas.messages import DlqRecord, Verdict
from tests.fixtures.stack import consume_all, consume_verdicts

REPO = Path(__file__).resolve().parents[2]
# A dead worker's partitions move after its session times out: keep that short in tests.
TEST_KAFKA_EXTRA = "session.timeout.ms=6000,heartbeat.interval.ms=500"


def worker_settings(settings: Settings, model: str | Path, **changes: object) -> Settings:
    """What test workers run with: fast failure detection, frequent progress verdicts."""
    values: dict[str, object] = {"kafka_extra": TEST_KAFKA_EXTRA, "max_batch_wait_ms": 20,
                                 "progress_every_tokens": 8}
    values.update(changes)
    return settings.replace(model=str(model), **values)


def settings_env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, **settings_environment(settings)}
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class WorkerProcess:
    """``python -m workers.stream`` with the given settings; its JSON log goes to a file."""

    def __init__(self, settings: Settings, log_dir: Path, name: str | None = None) -> None:
        self.settings = settings
        self.log_path = log_dir / f"worker-{name or uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.stream"], env=settings_env(self.settings),
                                     stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        return self

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def logged(self, msg: str) -> int:
        return sum(1 for line in self.log_lines() if line.get("msg") == msg)

    def wait_for_log(self, msg: str, timeout_s: float = 180.0, count: int = 1) -> None:
        wait_until(lambda: self.logged(msg) >= count, timeout_s, f"worker log line {msg!r}", self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM: the worker finishes its batch, commits and exits."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"worker ignored SIGTERM for {timeout_s}s; log {self.log_path}") from None
        return int(self.proc.returncode)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, worker: WorkerProcess | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if worker is not None and not worker.alive():
            raise AssertionError(f"worker exited while waiting for {what}:\n{worker.tail()}")
        time.sleep(0.2)
    tail = f"\n{worker.tail()}" if worker is not None else ""
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{tail}")


def input_lag(settings: Settings) -> int:
    """Input records not yet committed by the stream group (0: everything judged)."""
    return committed_lag(settings, wait_s=60)


def wait_caught_up(settings: Settings, timeout_s: float = 240.0, workers: Iterable[WorkerProcess] = ()) -> None:
    procs = list(workers)

    def done() -> bool:
        for w in procs:
            if not w.alive():
                raise AssertionError(f"worker died:\n{w.tail()}")
        return input_lag(settings) == 0

    wait_until(done, timeout_s, "the stream group to commit all input")


def wait_caught_up_supervised(
    settings: Settings, worker: WorkerProcess, restart: Callable[[], WorkerProcess], timeout_s: float = 300.0
) -> WorkerProcess:
    """Like a process supervisor: a worker that exits because a Kafka call hung (see
    workers.stream.worker.EXIT_KAFKA_HUNG) is restarted; any other exit fails the test."""
    from workers.stream.worker import EXIT_KAFKA_HUNG

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not worker.alive():
            assert worker.proc is not None and worker.proc.returncode == EXIT_KAFKA_HUNG, worker.tail()
            worker = restart()
        if input_lag(settings) == 0:
            return worker
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for the stream group to commit all input")


def verdicts(settings: Settings) -> list[Verdict]:
    return consume_verdicts(settings)


def settled_verdicts(settings: Settings, want: int, timeout_s: float = 60.0) -> list[Verdict]:
    """Verdicts once ``want`` distinct ids are visible (or the timeout passed).

    A worker killed inside a transaction leaves it open until the broker aborts it
    (transaction.timeout.ms), and read-committed readers of that verdict partition stop there
    until then: later verdicts exist but are not visible yet. A restart under the same
    ``worker_instance`` aborts it at once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        found = verdicts(settings)
        if len({v.verdict_id for v in found}) >= want or time.monotonic() > deadline:
            return found
        time.sleep(1.0)


def dlq_records(settings: Settings) -> list[DlqRecord]:
    import msgspec

    decoder = msgspec.json.Decoder(DlqRecord)
    return [decoder.decode(r.value) for r in consume_all(settings, settings.topic_dlq) if r.value]


def comparable(v: Verdict) -> tuple[object, ...]:
    """A verdict without its wall-clock fields."""
    return tuple(getattr(v, f) for f in v.__struct_fields__ if f not in ("ts_ms", "latency_ms"))


def dedup(found: Iterable[Verdict]) -> dict[str, tuple[object, ...]]:
    """verdict_id -> content; fails if two verdicts with one id differ (a contradiction)."""
    by_id: dict[str, tuple[object, ...]] = {}
    for v in found:
        content = comparable(v)
        if v.verdict_id in by_id:
            assert by_id[v.verdict_id] == content, f"verdict {v.verdict_id} was published with two contents"
        by_id[v.verdict_id] = content
    return by_id


def assert_same_verdicts(
    found: dict[str, tuple[object, ...]], expected: dict[str, tuple[object, ...]], context: object = ""
) -> None:
    """Equal sets, with a readable account of what differs.

    ``scores`` are compared to 1e-3: they are softmax values rounded to 4 decimals, and batches of
    different shapes (another run's timing) move logits by ~1e-7, which can flip the last digit.
    Everything else (ids, risks, categories, positions, actions) must be identical.
    """
    fields = [f for f in Verdict.__struct_fields__ if f not in ("ts_ms", "latency_ms")]
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    differing = {}
    for k in set(found) & set(expected):
        diff = {f: (a, b) for f, a, b in zip(fields, found[k], expected[k], strict=True)
                if not (a == b or (f == "scores" and _close_scores(a, b)))}
        if diff:
            differing[k] = diff
    assert not (missing or extra or differing), (
        f"missing {missing}\nextra {extra}\ndiffering (got, expected) {differing}\n{context}")


def _close_scores(a: object, b: object, tolerance: float = 1e-3) -> bool:
    if not (isinstance(a, dict) and isinstance(b, dict)) or a.keys() != b.keys():
        return False
    return all(abs(float(a[k]) - float(b[k])) <= tolerance for k in a)


def duplicates(found: Iterable[Verdict]) -> list[str]:
    """verdict_ids published more than once (read-committed, exactly-once output expects none)."""
    seen: set[str] = set()
    dup = []
    for v in found:
        if v.verdict_id in seen:
            dup.append(v.verdict_id)
        seen.add(v.verdict_id)
    return dup


def assert_fault_free_outcome(settings: Settings, expected: dict[str, tuple[object, ...]]) -> None:
    """After a dependency fault (Kafka, Redis, the engine): the verdicts of a fault-free run, each
    published once, and nothing blamed on the input."""
    found = settled_verdicts(settings, len(expected))
    assert duplicates(found) == [], "a batch was published twice"
    assert_same_verdicts(dedup(found), expected)
    assert dlq_records(settings) == [], "a fault that was not the input's was blamed on it"
