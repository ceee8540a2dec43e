"""`guardstream bench worker` drains one backlog with the worker and the bare pass-through loop in one run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from schemas.messages import decode_delta
from tests.fixtures.stack import StackEndpoints
from workers.bench.worker import StageClock, backlog_messages

STAGES = {"decode", "tokenize", "render", "score", "engine host side", "model (ORT run)", "kafka transaction",
          "redis"}


def _busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_stage_clock_charges_a_stage_only_its_own_time() -> None:
    clock = StageClock()
    inner = clock.wrap("inner", lambda: _busy(0.02))

    def outer_body() -> None:
        _busy(0.01)
        inner()

    clock.wrap("outer", outer_body)()
    assert clock.calls == {"inner": 1, "outer": 1}
    assert 0.02e9 <= clock.ns["inner"] < 0.03e9
    assert 0.01e9 <= clock.ns["outer"] < 0.02e9   # the 20 ms of "inner" are not counted twice


def test_backlog_is_one_token_per_delta_interleaved_across_conversations() -> None:
    messages = backlog_messages("bl", 300)
    deltas = [decode_delta(value, 1 << 20) for _, value in messages]
    conversations = {d.conversation_id for d in deltas}
    assert len(messages) >= 300 and len(conversations) >= 2
    assert [key for key, _ in messages] == [d.conversation_id for d in deltas]
    # Live-traffic order: the first deltas come from different conversations.
    assert len({d.conversation_id for d in deltas[:len(conversations)]}) == len(conversations)
    for cid in conversations:
        own = [(d.message_index, d.seq, d.final) for d in deltas if d.conversation_id == cid]
        for message in (0, 1):
            seqs = [(seq, final) for m, seq, final in own if m == message]
            assert [s for s, _ in seqs] == list(range(len(seqs)))
            assert [f for _, f in seqs] == [False] * (len(seqs) - 1) + [True]


def test_quick_bench_worker_measures_worker_and_passthrough_on_the_same_backlog(
    stack: StackEndpoints, tiny_onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from workers.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "worker", "--quick", "--model", str(tiny_onnx_dir), "--out", str(out), "--partitions", "2",
                 "--kafka-bootstrap", stack.kafka_bootstrap, "--redis-url", stack.redis_url,
                 "--state-dir", str(tmp_path / "state")]) == 0
    report = json.loads((out / "worker.json").read_text())
    assert (out / "worker.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = {r["mode"]: r for r in report["results"]}
    assert set(results) == {"passthrough", "worker", "worker-stages"}
    backlog = report["backlog_deltas"]
    for r in results.values():
        assert r["completed"] and r["deltas"] >= backlog and r["cpu_s"] > 0 and r["seconds"] > 0
        assert sum(r["threads_cpu_s"].values()) == pytest.approx(r["cpu_s"], abs=1e-3)
    assert results["passthrough"]["outputs"] == results["passthrough"]["deltas"]
    # Every message of the backlog got its final verdict from the real worker.
    assert results["worker"]["outputs"] >= 2 * report["conversations"]
    assert report["cpu_ratio_worker_to_passthrough"] == pytest.approx(
        results["worker"]["cpu_us_per_delta"] / results["passthrough"]["cpu_us_per_delta"], rel=0.01)
    assert set(results["worker-stages"]["stages_ns"]) >= STAGES
    assert not results["worker"]["stages_ns"]   # the headline run has no hooks
    printed = capsys.readouterr().out
    assert "| passthrough |" in printed and "| stage |" in printed


def test_an_empty_backlog_is_refused_with_what_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workers.cli import main

    assert main(["bench", "worker", "--deltas", "0", "--out", str(tmp_path / "b")]) == 2
    assert "--deltas must be at least 1" in capsys.readouterr().err
