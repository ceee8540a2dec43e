"""Fixtures of the gateway tests: one real stream worker for the module, with a policy book whose
outcomes the offline reference predicts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.kafka import delete_topics, ensure_topics
from schemas.messages import TokenDelta, Verdict
from tests.fixtures.stack import StackEndpoints
from tests.worker.conftest import expected_verdicts
from tests.worker.harness import WorkerProcess, worker_settings

# open: replies are never relabelled risky (thresholds of 1.0), and loose allows controversial.
# tripwire: every reply token counts as unsafe (threshold 0.0), so a reply is blocked at its
# second token (two in a row), whatever the random model says. flagger: every reply token counts as
# controversial and none as unsafe, and loose allows controversial: every reply is allowed but flagged.
POLICY = """\
default: strict
tenants:
  open: {mode: loose, unsafe_threshold: 1.0, risky_threshold: 1.0}
  tripwire: {mode: loose, unsafe_threshold: 0.0}
  flagger: {mode: loose, unsafe_threshold: 1.0, risky_threshold: 0.0}
"""

CANDIDATE_PROMPTS = [
    "How do I bake bread at home?", "What is the capital of France?", "Tell me a joke about cats.",
    "How can I learn to program?", "Write a poem about the sea.", "What time is it in Tokyo?",
    "Explain photosynthesis simply.", "Give me a recipe for soup.", "Why is the sky blue?",
    "How do I pick a lock?", "Summarise the news today.", "What is two plus two?",
    "Recommend a good book.", "How do rockets work?", "Translate hello into Spanish.",
    "What should I name my dog?",
]


@dataclass(frozen=True)
class GuardedStack:
    settings: Settings       # topics of this module, the policy file set
    worker: WorkerProcess
    allowed_prompt: str      # the reference judges it safe: every tenant allows it
    blocked_prompt: str      # the reference judges it risky: the default (strict) policy blocks it
    blocked_prompt_verdict: Verdict


def prompt_outcomes(settings: Settings, onnx_dir: Path) -> dict[str, Verdict]:
    """Each candidate prompt's final verdict under the default (strict) policy, as the offline
    reference run of the scoring code has it."""
    ids = {f"ref-{uuid.uuid4().hex[:8]}-{i}": p for i, p in enumerate(CANDIDATE_PROMPTS)}
    deltas = [TokenDelta(conversation_id=cid, message_index=0, role="user", seq=0, text=p, final=True,
                         ts_ms=0) for cid, p in ids.items()]
    return {ids[v.conversation_id]: v for v in expected_verdicts(settings, onnx_dir, deltas) if v.kind == "final"}


@pytest.fixture(scope="module")
def guarded_stack(stack: StackEndpoints, tiny_onnx_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedStack]:
    from pipeline.config import load_settings

    tmp = tmp_path_factory.mktemp("gateway")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    prefix = f"g{uuid.uuid4().hex[:10]}"
    settings = load_settings().replace(
        kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url, topic_in=f"{prefix}.guard.in",
        topic_verdicts=f"{prefix}.guard.verdicts", topic_dlq=f"{prefix}.guard.in.dlq",
        stream_group=f"{prefix}-stream", partitions=4, metrics_port=0, policy_file=str(policy),
    )
    ensure_topics(settings)
    outcomes = prompt_outcomes(settings, tiny_onnx_dir)
    allowed = [p for p, v in outcomes.items() if v.risk == "safe"]
    blocked = [p for p, v in outcomes.items() if v.action == "block"]
    assert allowed and blocked, f"the candidates need one allowed and one blocked prompt: {outcomes}"
    worker = WorkerProcess(worker_settings(settings, tiny_onnx_dir), tmp, "gateway").start()
    try:
        worker.wait_for_log("partitions assigned")
        yield GuardedStack(settings, worker, allowed[0], blocked[0], outcomes[blocked[0]])
    finally:
        if worker.alive():
            worker.stop()
        delete_topics(settings, [settings.topic_in, settings.topic_verdicts, settings.topic_dlq])
