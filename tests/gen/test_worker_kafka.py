"""The generative worker on a real Kafka: one valid ruling per message, through a SIGKILL; DLQ; health."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import pytest

from pipeline.config import Settings
from pipeline.labels import LONG_CATEGORY_NAMES
from pipeline.policy import TenantPolicy
from schemas.messages import DlqRecord, TokenDelta, Verdict, encode
from tests.fixtures.stack import consume_all, consume_verdicts, produce, produce_deltas

pytestmark = pytest.mark.timeout(900)

LONG_ANSWER = "START-OF-ANSWER " + " ".join(f"step{i}" for i in range(1500)) + " END-OF-ANSWER"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    def __init__(self, settings: Settings, log_file: Path, extra: dict[str, str] | None = None,
                 start_from: str | None = "earliest") -> None:
        self.port = _free_port()
        flags = {
            "--kafka-bootstrap": settings.kafka_bootstrap, "--topic-in": settings.topic_in,
            "--topic-verdicts": settings.topic_verdicts, "--topic-dlq": settings.topic_dlq,
            "--generative-group": settings.generative_group, "--model": settings.model,
            "--max-context-tokens": str(settings.max_context_tokens), "--gen-max-batch": str(settings.gen_max_batch),
            "--max-text-bytes": str(settings.max_text_bytes), "--metrics-port": str(self.port),
            "--device": "cpu", "--gen-threads": "1", **(extra or {}),
        }
        if start_from is not None:   # None: the worker's default
            flags["--gen-start-from"] = start_from
        args = [sys.executable, "-m", "workers.generative", *[x for kv in flags.items() for x in kv]]
        self.log_path = log_file
        self.log = log_file.open("ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ})

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker exited early with {self.proc.returncode}"
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError("worker not ready in time")

    def metric(self, name: str) -> float:
        """A sample's value on /metrics (0 when absent)."""
        status, body = self.get("/metrics")
        assert status == 200
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.log.close()


def _conversations() -> dict[str, list[tuple[str, str]]]:
    convs = {
        f"conv-{i}": [("user", f"question {i}: how do I do thing {i}?"),
                      ("assistant", f"Here is thing {i}, step by step."),
                      ("user", f"and what about {i * 7}?"), ("assistant", "I cannot help with that.")]
        for i in range(5)
    }
    convs["conv-long"] = [("system", "You are helpful."), ("user", "explain everything"), ("assistant", LONG_ANSWER)]
    return convs


def _deltas(conversation_id: str, messages: list[tuple[str, str]]) -> list[TokenDelta]:
    out = []
    for index, (role, text) in enumerate(messages):
        words = text.split(" ")
        chunks = [" ".join(words[i:i + 40]) + (" " if i + 40 < len(words) else "") for i in range(0, len(words), 40)]
        out += [TokenDelta(conversation_id=conversation_id, message_index=index, role=role,  # type: ignore[arg-type]
                           seq=seq, text=chunk, final=seq == len(chunks) - 1, tenant="acme")
                for seq, chunk in enumerate(chunks)]
    return out


def _wait_for_verdicts(settings: Settings, expected: set[str], timeout_s: float,
                       worker: WorkerProcess | None = None) -> list[Verdict]:
    """Every expected ruling, or an error that says what the worker did instead (exit, DLQ, log)."""
    deadline = time.monotonic() + timeout_s
    verdicts: list[Verdict] = []
    while time.monotonic() < deadline:
        verdicts = consume_verdicts(settings, timeout_s=30)
        if expected <= {v.verdict_id for v in verdicts}:
            return verdicts
        if worker is not None and worker.proc.poll() is not None:
            break   # nothing more will come
        time.sleep(3)
    missing = sorted(expected - {v.verdict_id for v in verdicts})
    raise AssertionError(f"no ruling for {missing}{_what_happened(settings, missing, worker)}")


def _what_happened(settings: Settings, missing: list[str], worker: WorkerProcess | None) -> str:
    conversations = {m.split("/")[0] for m in missing}
    dead = [msgspec.json.decode(r.value or b"", type=DlqRecord)
            for r in consume_all(settings, settings.topic_dlq, timeout_s=30)]
    reasons = [(d.conversation_id, d.reason) for d in dead if d.conversation_id in conversations]
    lines = [f"DLQ records of those conversations: {reasons}"]
    if worker is not None:
        lines.append(f"worker exit code: {worker.proc.poll()}")
        worker.log.flush()
        notable = [line for line in worker.log_path.read_text(errors="replace").splitlines()
                   if '"level": "warning"' in line or '"level": "error"' in line]
        lines.append("worker warnings and errors (last 30):\n" + "\n".join(notable[-30:]))
    return "\n" + "\n".join(lines)


def _assert_valid(verdict: Verdict) -> None:
    assert verdict.source == "generative" and verdict.kind == "final"
    assert verdict.verdict_id == f"{verdict.conversation_id}/{verdict.message_index}/generative/final/0"
    assert verdict.risk in ("safe", "unsafe", "controversial")
    assert verdict.categories is not None and set(verdict.categories) <= set(LONG_CATEGORY_NAMES)
    assert (verdict.refusal is None) == (verdict.role == "user")
    assert verdict.action == TenantPolicy().action(verdict.risk, verdict.categories or None)
    assert verdict.category == (verdict.categories[0] if verdict.risk != "safe" and verdict.categories else None)
    assert verdict.scores is not None and abs(sum(verdict.scores.values()) - 1.0) < 0.01
    assert verdict.tenant == "acme"


def _ruling(verdict: Verdict) -> tuple[object, ...]:
    return (verdict.risk, verdict.action, verdict.category, tuple(verdict.categories or ()), verdict.refusal,
            verdict.role, verdict.truncated_tokens, verdict.model)


def test_every_message_gets_one_consistent_ruling_through_a_sigkill(gen_settings: Settings, tmp_path: Path) -> None:
    conversations = _conversations()
    deltas = {cid: _deltas(cid, msgs) for cid, msgs in conversations.items()}
    for cid in ("conv-0", "conv-1", "conv-long"):   # ended conversations free their state
        deltas[cid].append(TokenDelta(conversation_id=cid, type="end"))
    expected = {f"{cid}/{i}/generative/final/0" for cid, msgs in conversations.items()
                for i, (role, _) in enumerate(msgs) if role != "system"}
    first = [d for ds in deltas.values() for d in ds[: len(ds) // 2 + 1]]
    rest = [d for ds in deltas.values() for d in ds[len(ds) // 2 + 1:]]
    produce_deltas(gen_settings, first)

    worker = WorkerProcess(gen_settings, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        deadline = time.monotonic() + 300
        while not consume_verdicts(gen_settings, timeout_s=30) and time.monotonic() < deadline:
            time.sleep(1)
        produce_deltas(gen_settings, rest[: len(rest) // 2])
        worker.kill()   # mid-run: deltas are waiting and rulings may be in flight
    finally:
        worker.close()
    produce_deltas(gen_settings, rest[len(rest) // 2:])
    restarted = WorkerProcess(gen_settings, tmp_path / "worker.log")
    try:
        restarted.wait_ready()
        verdicts = _wait_for_verdicts(gen_settings, expected, timeout_s=600, worker=restarted)
        assert restarted.terminate() == 0   # graceful on SIGTERM
    finally:
        restarted.close()

    by_id: dict[str, list[Verdict]] = {}
    for verdict in verdicts:
        _assert_valid(verdict)
        by_id.setdefault(verdict.verdict_id, []).append(verdict)
    assert set(by_id) == expected
    for copies in by_id.values():
        assert len({_ruling(v) for v in copies}) == 1, copies
        # Scores may differ by float noise between batch shapes; 3 decimals hide it almost always.
        for key in copies[0].scores or {}:
            values = [(v.scores or {})[key] for v in copies]
            assert max(values) - min(values) <= 0.002
    assert all((v.truncated_tokens or 0) > 0 for v in by_id["conv-long/2/generative/final/0"])
    assert all(v.truncated_tokens is None for vid, vs in by_id.items() if vid.startswith("conv-0") for v in vs)


def test_bad_input_goes_to_the_dlq_and_good_input_is_still_ruled(gen_settings: Settings, tmp_path: Path) -> None:
    good = _deltas("conv-good", [("user", "a fine question"), ("assistant", "a fine answer")])
    contradiction = TokenDelta(conversation_id="conv-good", message_index=0, role="assistant", seq=5, text="x",
                               tenant="acme")  # same tenant: drafts are per (tenant, conversation)
    bad: list[tuple[str | bytes | None, bytes]] = [
        ("k1", b"{not json"),
        ("k2", b"\xff\xfe\x00garbage"),
        ("k3", json.dumps({"conversation_id": "c", "role": "robot", "seq": 0, "message_index": 0}).encode()),
        ("k4", encode(TokenDelta(conversation_id="c", message_index=0, role="user", seq=0,
                                 text="x" * (gen_settings.max_text_bytes + 1)))),
        # The shared edge checks (pipeline.intake): the key must be the conversation id; 64-bit bounds.
        ("k5", encode(TokenDelta(conversation_id="c5", message_index=0, role="user", seq=0, text="hi", final=True))),
        ("c6", json.dumps({"conversation_id": "c6", "role": "user", "seq": 2**64, "message_index": 0}).encode()),
    ]
    produce(gen_settings, gen_settings.topic_in, bad)
    produce_deltas(gen_settings, [*good, contradiction])
    worker = WorkerProcess(gen_settings, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        verdicts = _wait_for_verdicts(gen_settings, {"conv-good/0/generative/final/0",
                                                     "conv-good/1/generative/final/0"}, timeout_s=300)
        status, metrics = worker.get("/metrics")
        assert status == 200 and "guardstream_gen_rulings_total" in metrics
        assert worker.get("/healthz")[0] == 200
        assert worker.terminate() == 0
    finally:
        worker.close()
    for verdict in verdicts:
        _assert_valid(verdict)
    records = [msgspec.json.decode(r.value or b"", type=DlqRecord)
               for r in consume_all(gen_settings, gen_settings.topic_dlq, timeout_s=30)]
    reasons = sorted(r.reason.split(":")[0] for r in records)
    assert reasons == sorted(["malformed JSON", "invalid UTF-8 at byte 0", "schema violation", "oversized text",
                              "message 0 is a user message; a chunk says assistant", "key mismatch",
                              "number out of range"]), reasons
    assert all(r.worker == "generative" and r.source_topic == gen_settings.topic_in for r in records)
    originals = {r.original_b64 for r in records}
    assert base64.b64encode(b"{not json").decode() in originals
