"""``guardstream eval --through-kafka``: the labelled set through a live stream worker on the real local
Kafka gives the offline reference's numbers, plus the worker's verdict latency; a tenant's threshold
rule in the worker's policy file is applied by the worker as by the offline reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.eval.test_eval_command import DATA, run_eval


def test_eval_through_a_live_worker_gives_the_reference_numbers(
    settings: Any, start_worker: Any, tiny_stream_dir: Path, tiny_onnx_dir: Path, tmp_path: Path,
) -> None:
    data = tmp_path / "set.jsonl"
    data.write_text("".join((DATA / n).read_text(encoding="utf-8") for n in ("loc.jsonl", "conversations.jsonl")),
                    encoding="utf-8")
    policy = tmp_path / "policy.yaml"
    policy.write_text("tenants:\n  careful: {mode: strict, unsafe_threshold: 0.45, risky_threshold: 0.62, "
                      "debounce_tokens: 3}\n")
    reference = run_eval(tiny_stream_dir, data, tmp_path / "reference")
    careful = run_eval(tiny_stream_dir, data, tmp_path / "reference-careful", "--policy-file", str(policy),
                       "--tenant", "careful")
    assert careful["metrics"] != reference["metrics"], "the rule must change something, or this test proves nothing"
    worker = start_worker(settings, policy_file=str(policy))
    kafka = ["--through-kafka", "--kafka-bootstrap", settings.kafka_bootstrap, "--topic-in", settings.topic_in,
             "--topic-verdicts", settings.topic_verdicts, "--kafka-timeout", "240", "--policy-file", str(policy)]
    live = run_eval(tiny_onnx_dir, data, tmp_path / "live", "--chunk-chars", "5", *kafka)
    live_careful = run_eval(tiny_onnx_dir, data, tmp_path / "live-careful", "--chunk-tokens", "1", "--tenant",
                            "careful", *kafka)
    assert worker.stop() == 0
    assert live["engine"].startswith("live stream worker")
    assert live["metrics"] == reference["metrics"]
    assert live_careful["metrics"] == careful["metrics"]
    assert [s["id"] for s in live["samples"]] == [s["id"] for s in reference["samples"]]
    assert live["latency"]["final"]["p50"] is not None and live["latency"]["final"]["p50"] >= 0


def test_through_kafka_refuses_a_sweep(tiny_stream_dir: Path, tmp_path: Path) -> None:
    from workers.cli import main

    assert main(["eval", "--model", str(tiny_stream_dir), "--data", str(DATA / "loc.jsonl"), "--through-kafka",
                 "--sweep"]) == 2
