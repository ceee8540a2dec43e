"""`guardstream bench tokenizer` writes its table, JSON and plot with the whole-text baseline in the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.bench.tokenizer import CLASS_UNITS, DELTA_SIZES


def test_quick_bench_writes_json_and_plot_with_the_whole_text_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from workers.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "tokenizer", "--quick", "--chars", "300", "--out", str(out)]) == 0
    report = json.loads((out / "tokenizer.json").read_text())
    assert (out / "tokenizer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = report["rows"]
    assert [(r["input"], r["delta_chars"]) for r in rows] == [(c, d) for c in CLASS_UNITS for d in DELTA_SIZES]
    assert all(r["us_per_char"] > 0 and r["whole_us_per_char"] > 0 for r in rows)
    tokens = [r for r in rows if r["delta_chars"] == "token"]
    assert all(r["deltas"] == r["tokens"] for r in tokens if r["input"] == "digits")   # one digit per token
    assert all(r["ratio_to_whole"] == pytest.approx(r["us_per_char"] / r["whole_us_per_char"], rel=0.1) for r in rows)
    # 300 characters stay under the held-text cap: every class streams out exactly.
    assert all(r["exact"] for r in rows)
    assert "| input | delta |" in capsys.readouterr().out
    assert "| digits | 1 |" in (out / "tokenizer.md").read_text()


def test_bench_refuses_a_non_positive_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workers.cli import main

    assert main(["bench", "tokenizer", "--chars", "-5", "--out", str(tmp_path / "b")]) == 2
    assert "--chars must be at least 1" in capsys.readouterr().err
