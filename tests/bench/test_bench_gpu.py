"""`guardstream bench gpu` on a machine without a GPU: a dry run lists its steps, a real run refuses clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workers.bench import gpu


def test_dry_run_lists_install_and_bench_steps_without_running_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from workers.cli import main

    assert main(["bench", "gpu", "--dry-run", "--out", str(tmp_path / "gpu")]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime-gpu[cuda,cudnn]==" in printed  # the pin of pyproject's gpu extra
    assert "bench engine --size 0.6b --precision fp16 --device cuda" in printed
    assert f"--batch-sizes 1,16,{gpu.P99_BATCH},128,{gpu.GOAL_BATCH}" in printed
    assert not (tmp_path / "gpu").exists()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA GPU")
def test_without_a_gpu_a_real_run_refuses_and_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from workers.cli import main

    assert main(["bench", "gpu", "--out", str(tmp_path / "gpu")]) == 2
    err = capsys.readouterr().err
    assert "no NVIDIA GPU found" in err and "--dry-run" in err
    assert not (tmp_path / "gpu").exists()


def test_goals_are_read_from_the_engine_report(tmp_path: Path) -> None:
    report = {"machine": "GPU", "results": {"batches": [
        {"size": 64, "tokens_per_s": 9e4, "ms_per_call": 0.7, "p50_ms": 0.8, "p99_ms": 1.5},
        {"size": 256, "tokens_per_s": 1.2e5, "ms_per_call": 2.1, "p50_ms": 2.2, "p99_ms": 3.0},
        {"size": 512, "tokens_per_s": 1.6e5, "ms_per_call": 3.2, "p50_ms": 3.3, "p99_ms": 4.0},
    ]}}
    (tmp_path / "engine.json").write_text(json.dumps(report))
    goals = gpu.read_goals(tmp_path / "engine.json")
    assert goals[f"tokens_per_s_batch_ge_{gpu.GOAL_BATCH}"] == 1.6e5 and goals["tokens_per_s_goal_met"]
    assert goals[f"step_p99_ms_batch_{gpu.P99_BATCH}"] == 1.5
    assert gpu.read_goals(tmp_path / "absent.json")["measured"] is False


def test_every_planned_guardstream_step_parses_with_the_cli(tmp_path: Path) -> None:
    from workers.cli import build_parser

    steps = gpu.plan_steps(tmp_path, ".guardstream", install=[], kafka_up=True)
    commands = [s.argv for s in steps if s.argv[1:3] == ["-m", "workers.cli"]]
    assert len(commands) == 3
    for argv in commands:
        parsed = build_parser().parse_args(argv[3:])  # argparse exits (fails the test) on a bad flag
        assert parsed.func is not None
