"""`guardstream dlq` reads what a real worker dead-lettered and re-publishes a fixed record;
`guardstream smoke` passes with a running worker and fails (non-zero) without one."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from pathlib import Path

import msgspec
import pytest

from pipeline.config import Settings
from pipeline.dlq import dlq_record
from schemas.messages import TokenDelta, encode
from tests.fixtures.stack import consume_verdicts, produce
from tests.worker.harness import WorkerProcess, dlq_records, wait_until, worker_settings
from workers.cli import main

pytestmark = pytest.mark.timeout(600)


def _kafka(settings: Settings) -> list[str]:
    return ["--kafka-bootstrap", settings.kafka_bootstrap, "--topic-dlq", settings.topic_dlq]


def test_dlq_list_show_and_republish_a_fixed_record(
    settings: Settings, tiny_onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = worker_settings(settings, tiny_onnx_dir)
    cid = f"dlq-fix-{uuid.uuid4().hex[:8]}"   # Redis state is shared by every test run
    broken = json.dumps({"conversation_id": cid, "message_index": 0, "role": "robot", "seq": 0,
                         "text": "hello there", "final": True}).encode()
    produce(ws, ws.topic_in, [(cid, broken)])
    worker = WorkerProcess(ws, tmp_path).start()
    try:
        wait_until(lambda: len(dlq_records(ws)) >= 1, 180, "the DLQ record", worker)
        capsys.readouterr()
        assert main(["dlq", "list", *_kafka(ws)]) == 0
        listed = capsys.readouterr().out.splitlines()
        assert listed[-1] == "1 record(s) in " + ws.topic_dlq
        ref = listed[0].split()[0]
        assert f"{ws.topic_in}[" in listed[0] and cid in listed[0]

        original = tmp_path / "original.json"
        assert main(["dlq", "show", ref, "--original-out", str(original), *_kafka(ws)]) == 0
        shown = capsys.readouterr().out
        assert f"topic {ws.topic_in}, partition" in shown and "offset 0" in shown
        assert "robot" in shown and "reason" in shown
        assert original.read_bytes() == broken

        # The record as it was is refused (still invalid); the fixed one is published and judged.
        assert main(["dlq", "republish", ref, *_kafka(ws), "--topic-in", ws.topic_in]) == 2
        fixed = json.loads(original.read_text())
        fixed["role"] = "user"
        original.write_text(json.dumps(fixed))
        assert main(["dlq", "republish", ref, "--file", str(original), *_kafka(ws), "--topic-in", ws.topic_in]) == 0
        wait_until(lambda: any(v.conversation_id == cid and v.kind == "final"
                               for v in consume_verdicts(ws, timeout_s=10)), 120, "the fixed delta's verdict", worker)

        # A running worker: the smoke test passes.
        capsys.readouterr()
        assert main(["smoke", "--timeout", "120", "--kafka-bootstrap", ws.kafka_bootstrap,
                     "--topic-in", ws.topic_in, "--topic-verdicts", ws.topic_verdicts]) == 0
        assert "smoke test passed" in capsys.readouterr().out
    finally:
        worker.stop()


def test_smoke_fails_when_no_worker_answers(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["smoke", "--timeout", "3", "--kafka-bootstrap", settings.kafka_bootstrap,
                 "--topic-in", settings.topic_in, "--topic-verdicts", settings.topic_verdicts]) == 1
    out = capsys.readouterr().out
    assert "smoke test FAILED" in out and "message 0 from the stream worker" in out


def test_dlq_reader_keeps_fields_a_newer_writer_adds_and_refuses_to_republish_a_truncated_original(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = encode(TokenDelta(conversation_id="big", message_index=0, role="user", seq=0, text="x" * 5000))
    record = msgspec.to_builtins(dlq_record("text too long", full[:100], settings.topic_in, 3, 42, "w", 1, b"big"))
    record.update(original_length=len(full), original_sha256=hashlib.sha256(full).hexdigest(), original_truncated=True,
                  something_new=1)
    record["original_b64"] = base64.b64encode(full[:100]).decode()
    produce(settings, settings.topic_dlq, [("big", json.dumps(record).encode())])
    refs = []
    capsys.readouterr()
    assert main(["dlq", "list", "--json", *_kafka(settings)]) == 0
    for line in capsys.readouterr().out.splitlines():
        entry = json.loads(line)
        refs.append(f"{entry['dlq_partition']}:{entry['dlq_offset']}")
        assert entry["original_sha256"] == hashlib.sha256(full).hexdigest() and entry["something_new"] == 1
        assert entry["source_offset"] == 42
    (ref,) = refs
    assert main(["dlq", "show", ref, *_kafka(settings)]) == 0
    shown = capsys.readouterr().out
    assert f"TRUNCATED: the original had {len(full)} bytes" in shown
    assert hashlib.sha256(full).hexdigest() in shown and "something_new" in shown
    assert main(["dlq", "republish", ref, *_kafka(settings), "--topic-in", settings.topic_in]) == 2
    assert "--file" in capsys.readouterr().err
