"""`guardstream bench e2e`: a paced load generator in its own process, guardstream vs the official approach."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from schemas.messages import decode_delta
from tests.fixtures.stack import StackEndpoints
from workers.bench.e2e import paced_schedule


def test_schedule_is_pre_encoded_in_due_order_at_the_rate_per_conversation() -> None:
    schedule = paced_schedule("p", 4, ["a", "b"], ["c", "d", "e"], rate=20.0, base_ms=1_000_000)
    assert len(schedule) == 4 * 5
    assert [due for due, *_ in schedule] == sorted(due for due, *_ in schedule)
    for conv in range(4):
        own = [(due, msg, seq, decode_delta(value)) for due, cid, msg, seq, value in schedule if cid == f"p-{conv}"]
        assert [(msg, seq) for _, msg, seq, _ in own] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
        assert [d.text for *_, d in own] == ["a", "b", "c", "d", "e"]
        assert [d.final for *_, d in own] == [False, True, False, False, True]
        assert own[0][0] == pytest.approx(conv / 4)   # starts staggered over one second
        assert all(b[0] - a[0] == pytest.approx(0.05) for a, b in itertools.pairwise(own))
        assert own[0][3].ts_ms == 1_000_000 + int(own[0][0] * 1000)


def test_quick_e2e_reports_offered_generated_and_latency_for_both_modes(
    stack: StackEndpoints, tiny_onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from workers.cli import main

    out = tmp_path / "e2e"
    assert main(["bench", "e2e", "--quick", "--levels", "3", "--baseline-levels", "1", "--rate", "40",
                 "--model", str(tiny_onnx_dir), "--out", str(out), "--partitions", "2", "--workers", "2",
                 "--kafka-bootstrap", stack.kafka_bootstrap, "--redis-url", stack.redis_url,
                 "--level-timeout-s", "60"]) == 0
    report = json.loads((out / "e2e.json").read_text())
    assert (out / "e2e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["partitions"] == 2
    rows = {(r["mode"], r["conversations"]): r for r in report["results"]}
    assert set(rows) == {("guardstream", 3), ("baseline", 1)}
    for (_, n), r in rows.items():
        assert r["completed"] and r["finals_seen"] == r["finals_expected"] == 2 * n
        assert r["workers"] == 2 and r["tokens_scored"] > 0   # scored in two worker processes, counted here
        assert r["offered_tokens_per_s"] == pytest.approx(40.0 * n)
        assert 0 < r["offered_deltas_per_s"] <= r["offered_tokens_per_s"] * 1.001
        assert r["generated_deltas_per_s"] > 0 and r["generator_lag_p99_ms"] >= 0
        assert r["latency_p50_ms"] is not None and r["latency_p99_ms"] >= r["latency_p50_ms"]
    assert "| offered deltas/s | generated deltas/s |" in capsys.readouterr().out
