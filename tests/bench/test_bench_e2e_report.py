"""`bench e2e` writes a markdown report that says what ran and explains a p99 worse than the baseline's."""

from __future__ import annotations

from workers.bench.e2e import TINY_LOAD_P99_NOTE, LevelResult, render_report


def _result(mode: str, n: int, p99: float) -> LevelResult:
    return LevelResult(mode=mode, conversations=n, workers=1, deltas=100, tokens_scored=120, seconds=5.0,
                       deltas_per_s=20.0,
                       tokens_per_s=24.0, offered_tokens_per_s=20.0, offered_deltas_per_s=20.0,
                       generated_deltas_per_s=20.0, generator_lag_p50_ms=1.0, generator_lag_p99_ms=2.0,
                       latency_p50_ms=30.0, latency_p99_ms=p99,
                       final_latency_p50_ms=30.0, final_latency_p99_ms=p99, finals_expected=2, finals_seen=2,
                       completed=True)


def test_report_has_command_table_and_names_the_levels_where_p99_is_worse() -> None:
    payload = {"command": "guardstream bench e2e --quick --rate 20 --partitions 4", "date": "2026-12-01 14:00 UTC",
               "model": "random tiny", "cpu_count": 2, "rate_tokens_per_s_per_conversation": 20.0}
    results = [_result("guardstream", 1, 90.0), _result("guardstream", 5, 40.0),
               _result("baseline", 1, 60.0), _result("baseline", 5, 80.0)]
    report = render_report(payload, results)
    assert "`guardstream bench e2e --quick --rate 20 --partitions 4`" in report
    assert "| guardstream | 1 | 1 |" in report and "| baseline | 1 | 5 |" in report
    assert "exceeded the baseline's at 1 concurrent" in report
    assert TINY_LOAD_P99_NOTE in report
