"""`guardstream bench engine --quick` writes its table, JSON and plot with the baseline in the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_quick_bench_writes_json_and_plot_with_baseline(
    tiny_onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from workers.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "engine", "--quick", "--model", str(tiny_onnx_dir), "--out", str(out)]) == 0
    report = json.loads((out / "engine.json").read_text())
    assert (out / "engine.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan, results = report["plan"], report["results"]
    assert [p["context"] for p in results["contexts"]] == list(plan["contexts"])
    with_baseline = [p for p in results["contexts"] if p["baseline_ms_per_token"] is not None]
    assert [p["context"] for p in with_baseline] == list(plan["baseline_contexts"])
    assert all(p["speedup"] == pytest.approx(p["baseline_ms_per_token"] / p["one_token_ms"]) for p in with_baseline)
    assert [p["size"] for p in results["batches"]] == list(plan["batch_sizes"])
    assert [p["size"] for p in results["chunks"]] == list(plan["chunk_sizes"])
    assert all(p["tokens_per_s"] > 0 for p in results["batches"] + results["chunks"])
    assert "Per-token cost vs context" in capsys.readouterr().out
    assert "| context |" in (out / "engine.md").read_text()


def test_bench_reports_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workers.cli import main

    assert main(["bench", "engine", "--model", str(tmp_path / "absent"), "--out", str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_processes_option_writes_the_aggregate_throughput_per_process_count(
    tiny_onnx_dir: Path, tmp_path: Path,
) -> None:
    from workers.cli import main

    out = tmp_path / "processes"
    args = ["bench", "engine", "--quick", "--model", str(tiny_onnx_dir), "--out", str(out),
            "--processes", "1,2", "--process-batch", "2", "--process-seconds", "1"]
    assert main(args) == 0
    report = json.loads((out / "engine-processes.json").read_text())
    assert [p["processes"] for p in report["results"]] == [1, 2]
    assert all(p["tokens_per_s"] > 0 and p["threads_per_process"] >= 1 for p in report["results"])
    assert (out / "engine-processes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "--processes 1,2" in report["command"]


def test_quick_bench_without_a_model_records_the_tiny_size_it_ran_and_its_run_time(tmp_path: Path) -> None:
    from workers.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "engine", "--quick", "--state-dir", str(tmp_path / "state"), "--out", str(out)]) == 0
    report = json.loads((out / "engine.json").read_text())
    assert report["command"] == "guardstream bench engine --size tiny --quick"
    assert report["seconds"] > 0 and report["bench_seconds"] > 0
    assert report["seconds"] >= report["bench_seconds"]
    assert "run took 0.0 s" not in (out / "engine.md").read_text()


def test_bench_engine_and_bench_gen_default_to_the_same_size() -> None:
    from workers.cli import build_parser

    parser = build_parser()
    engine = parser.parse_args(["bench", "engine"])
    gen = parser.parse_args(["bench", "gen"])
    assert engine.size == gen.size == "tiny"
