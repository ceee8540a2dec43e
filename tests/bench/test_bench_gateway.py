"""`guardstream bench gateway` measures both paths in one run and writes its table, JSON and plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def test_quick_bench_measures_direct_and_gateway_in_one_run(
    settings: Any, tiny_onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from workers.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "gateway", "--model", str(tiny_onnx_dir), "--levels", "1,3", "--tokens", "12",
                 "--token-delay-ms", "5", "--kafka-bootstrap", settings.kafka_bootstrap, "--redis-url",
                 settings.redis_url, "--partitions", "2", "--state-dir", str(tmp_path / "state"),
                 "--out", str(out)]) == 0
    report = json.loads((out / "gateway.json").read_text())
    assert (out / "gateway.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = report["results"]
    assert [(r["path"], r["streams"]) for r in rows] == [("direct", 1), ("gateway", 1), ("direct", 3), ("gateway", 3)]
    # The bench's policy releases every reply, so both paths measure whole streams.
    assert all(r["completed"] == r["streams"] and r["finish_reasons"] == {"stop": r["streams"]} for r in rows)
    assert all(r["ttft_p50_ms"] is not None and r["itl_p50_ms"] is not None for r in rows)
    assert "| gateway | 3 |" in capsys.readouterr().out
