"""``guardstream eval`` end to end on a random tiny checkpoint: the numbers do not depend on the engine
or the chunking, the stream Scorer applies a tenant's threshold rule, and the outputs are written.

Random weights make the numbers meaningless; what is pinned is that every path computes the same ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from pipeline.chunking import Chunker
from pipeline.decision import ThresholdRule
from pipeline.eval.dataset import read_samples
from pipeline.eval.runs import SimulatedStreamRunner
from pipeline.eval.sweep import rule_outcome
from pipeline.labels import LabelMaps
from pipeline.policy import PolicyBook, TenantPolicy
from pipeline.scoring.scorer import Scorer
from pipeline.tokens.text import TextTokenizer
from tests.scoring.hash_engine import HashEngine
from workers.cli import main

DATA = Path(__file__).resolve().parents[2] / "pipeline" / "eval" / "data"


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every shipped sample in one file (both layouts, prompts, responses, thinking, loc)."""
    path = tmp_path_factory.mktemp("eval-data") / "all.jsonl"
    path.write_text("".join((DATA / n).read_text(encoding="utf-8")
                            for n in ("classify.jsonl", "loc.jsonl", "conversations.jsonl")), encoding="utf-8")
    return path


def run_eval(model: Path, data: Path, out: Path, *flags: str) -> dict[str, Any]:
    assert main(["eval", "--model", str(model), "--data", str(data), "--out", str(out), *flags]) == 0
    assert (out / "eval.png").stat().st_size > 0
    return dict(json.loads((out / "eval.json").read_text(encoding="utf-8")))


def test_numbers_do_not_depend_on_engine_or_chunking(tiny_stream_dir: Path, tiny_onnx_dir: Path, eval_set: Path,
                                                     tmp_path: Path) -> None:
    reference = run_eval(tiny_stream_dir, eval_set, tmp_path / "ref")
    assert reference["metrics"]["samples"] == 34 and reference["metrics"]["timing"]["strict"]["total"] == 15
    runs = [
        run_eval(tiny_onnx_dir, eval_set, tmp_path / "onnx-whole", "--engine", "onnx"),
        run_eval(tiny_onnx_dir, eval_set, tmp_path / "onnx-c3", "--engine", "onnx", "--chunk-chars", "3"),
        run_eval(tiny_onnx_dir, eval_set, tmp_path / "onnx-t2", "--engine", "onnx", "--chunk-tokens", "2"),
        run_eval(tiny_stream_dir, eval_set, tmp_path / "torch-c7", "--chunk-chars", "7"),
    ]
    for other in runs:
        assert other["samples"] == reference["samples"], other["engine"]
        assert other["metrics"] == reference["metrics"], other["engine"]


def test_sweep_and_a_tenant_rule_from_the_policy_file(tiny_stream_dir: Path, eval_set: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("tenants:\n  careful: {mode: strict, risky_threshold: 0.35, debounce_tokens: 3}\n")
    report = run_eval(tiny_stream_dir, eval_set, tmp_path / "out", "--policy-file", str(policy), "--tenant",
                      "careful", "--sweep")
    assert report["rule"] == {"unsafe_threshold": None, "risky_threshold": 0.35, "debounce_tokens": 3}
    points = report["sweep"]["points"]
    assert report["sweep"]["threshold"] == "risky" and len(points) == 19
    assert [p["threshold"] for p in points] == sorted(p["threshold"] for p in points)
    # The swept point equal to the tenant's own rule reproduces the main run's numbers.
    same = [p for p in points if p["threshold"] == 0.35]
    assert same and same[0]["rule"]["debounce_tokens"] == 3
    assert same[0]["classification"] == report["metrics"]["classification"]["all"]["strict"]
    assert same[0]["timing"] == report["metrics"]["timing"]["strict"]


def test_unknown_tenant_and_bad_chunking_are_refused(tiny_stream_dir: Path, eval_set: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(tiny_stream_dir), "--data", str(eval_set), "--tenant", "nobody"]) == 2
    assert "tenant 'nobody' is not in the policy file" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_stream_dir), "--data", str(eval_set), "--chunk-chars", "0"]) == 2
    assert "--chunk-chars must be >= 1" in capsys.readouterr().err


def test_the_stream_scorer_applies_the_tenant_rule(qwen_tokenizer: Tokenizer) -> None:
    """Outcomes read from the Scorer's verdicts equal the rule applied offline to the same per-token
    probabilities, and differ from the official rule's somewhere (so the rule really was applied)."""
    text = TextTokenizer.of(qwen_tokenizer)
    samples = [s for s in read_samples(DATA / "loc.jsonl") + read_samples(DATA / "classify.jsonl")
               if s.role == "assistant"]
    rule = ThresholdRule(unsafe_threshold=0.45, risky_threshold=0.6, debounce_tokens=3)
    labels = LabelMaps()
    changed = 0
    for chunk in (1, 5):
        scorer = Scorer(text, labels, PolicyBook(default=TenantPolicy(rule=rule)), "hash", progress_every_tokens=0)
        runner = SimulatedStreamRunner(scorer, HashEngine(bias=(0.0, 2.2, 2.0)), Chunker("chars", chunk), labels, 8192)
        for sample in samples:
            got = runner.run(sample)
            assert got.argmax is not None and got.scores is not None
            assert got.outcome == rule_outcome(got.argmax, got.scores, rule, got.outcome.positions), sample.sample_id
            official = rule_outcome(got.argmax, got.scores, ThresholdRule(), got.outcome.positions)
            changed += official != got.outcome
    assert changed > 0


def test_moderate_applies_a_tenant_rule_identically_in_both_engines(
    tiny_stream_dir: Path, tiny_onnx_dir: Path, tmp_path: Path, sample_conversations: list[Any],
) -> None:
    """The reference and the stream scorer judge a thresholded tenant alike, and the rule changes verdicts."""
    from pipeline.conversations import Conversation, write_conversations

    conversations = [Conversation(c.conversation_id, "careful", c.messages) for c in sample_conversations]
    convs = tmp_path / "convs.jsonl"
    write_conversations(convs, conversations)
    policy = tmp_path / "policy.yaml"
    policy.write_text("tenants:\n  careful: {mode: strict, unsafe_threshold: 0.45, risky_threshold: 0.62, "
                      "debounce_tokens: 3}\n")
    outputs = {}
    for name, model, flags in (
        ("torch", tiny_stream_dir, ["--policy-file", str(policy)]),
        ("onnx", tiny_onnx_dir, ["--policy-file", str(policy), "--engine", "onnx", "--chunk-chars", "4"]),
        ("official", tiny_stream_dir, []),
    ):
        out = tmp_path / f"{name}.jsonl"
        assert main(["moderate", "--model", str(model), "--input", str(convs), "--output", str(out),
                     "--model-name", "tiny", *flags]) == 0
        outputs[name] = out.read_bytes()
    assert outputs["torch"] == outputs["onnx"]
    assert outputs["torch"] != outputs["official"]
