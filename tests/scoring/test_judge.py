"""The judge stage: its vectorised form (argmax over the micro-batch, integer debounce, softmax only
where a verdict needs scores) equals the reference rule token by token, and the offline decision."""

from __future__ import annotations

import copy
import random
from array import array

import msgspec
import numpy as np
import pytest

from pipeline.decision import ThresholdRule, decide_response, softmax_scores
from pipeline.engine.types import HeadOutputs
from pipeline.labels import LabelMaps
from pipeline.policy import PolicyBook, TenantPolicy
from pipeline.scoring.judge import Judge
from pipeline.scoring.render import ScoredRows, Taken
from pipeline.scoring.state import ConversationState, MessageScoring, pack


def _outputs(rng: np.random.Generator, n: int, risky: bool) -> HeadOutputs:
    # Risky: tilted towards unsafe and controversial, so pairs, escalations and blocks happen; else
    # mostly safe with a late controversial pair or none, so progress watermarks go out too.
    tilt = [0.6, 0.3, 0.5] if risky else [2.5, -1.0, 0.0]
    risk = rng.normal(size=(n, 3)).astype(np.float32) + np.array(tilt, dtype=np.float32)
    if risky:
        risk[rng.random(n) < 0.3] += np.array([0.0, 2.0, 0.0], dtype=np.float32)
    return HeadOutputs(risk, rng.normal(size=(n, 8)).astype(np.float32),
                       rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 9)).astype(np.float32))


def _conversation(rng: random.Random, index: int, n_tokens: int) -> tuple[ConversationState, MessageScoring]:
    state = ConversationState(f"c{index}", "lenient" if index % 3 == 0 else None, f"k{index}")
    record = MessageScoring(1, "assistant")
    # Deltas of 1 to 9 characters, tokens of 1 to 4 characters: seq lookups and progress watermarks vary.
    starts, at = [], 0
    while at < 4 * n_tokens:
        starts.append(at)
        at += rng.randint(1, 9)
    record.delta_starts, record.text_len = pack(starts), at
    state.scoring.append(record)
    return state, record


def _slices(rng: random.Random, total: int) -> list[tuple[int, int]]:
    cuts, at = [], 0
    while at < total:
        n = min(total - at, rng.randint(1, 12))
        cuts.append((at, n))
        at += n
    return cuts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("debounce", [2, 3])
def test_vectorised_judge_equals_the_reference_token_by_token(seed: int, debounce: int) -> None:
    """Same flags, progress and finals, same debouncer state, whatever the slicing and the batch."""
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    rule = ThresholdRule(debounce_tokens=debounce)
    policies = PolicyBook(default=TenantPolicy("strict", rule=rule),
                          tenants={"lenient": TenantPolicy("loose", rule=rule)})
    judge = Judge(LabelMaps(), policies, "m", progress_every_tokens=5, include_token_labels=True)
    convs = [_conversation(rng, i, 60) for i in range(4)]
    outputs = {id(state): _outputs(np_rng, 60, risky=i % 2 == 1) for i, (state, _) in enumerate(convs)}
    cuts = {id(state): _slices(rng, 60) for state, _ in convs}
    fast = copy.deepcopy(convs)
    fast_outputs = {id(fs): outputs[id(s)] for (fs, _), (s, _) in zip(fast, convs, strict=True)}
    fast_cuts = {id(fs): cuts[id(s)] for (fs, _), (s, _) in zip(fast, convs, strict=True)}

    def taken(record: MessageScoring, start: int, n: int) -> Taken:
        spans = array("I", [x for t in range(start, start + n) for x in (4 * t, 4 * t + 4)])
        return Taken([ScoredRows(record, list(range(start, start + n)), spans)], [])

    expected, got = [], []
    for step in range(max(len(c) for c in cuts.values())):
        for state, record in convs:   # the reference: the debouncer fed one token at a time
            if step < len(cuts[id(state)]):
                start, n = cuts[id(state)][step]
                scored = taken(record, start, n).scored[0]
                judge._response_by_token(state, scored, outputs[id(state)], policies.for_tenant(state.tenant),
                                         7, expected)
        answers = [(fast_outputs[id(s)], taken(r, *fast_cuts[id(s)][step]))
                   for s, r in fast if step < len(fast_cuts[id(s)])]
        batch = judge.argmax_batch(answers)   # one argmax over the whole micro-batch
        states = [s for s, _ in fast if step < len(fast_cuts[id(s)])]
        for state, (out, t), labels in zip(states, answers, batch, strict=True):
            got += judge.judge(state, out, t, 7, labels)
    assert [msgspec.to_builtins(v) for v in got] == [msgspec.to_builtins(v) for v in expected]
    assert any(v.kind == "flag" for v in got) and any(v.kind == "progress" for v in got)
    for (_, a), (_, b) in zip(convs, fast, strict=True):
        assert msgspec.to_builtins(a) == msgspec.to_builtins(b)
    for (state, _), (_, fast_record) in zip(convs, fast, strict=True):
        out = outputs[id(state)]
        offline = decide_response(out.risk_logits, out.category_logits, LabelMaps(), rule)
        online = fast_record.debouncer.decision(offline.token_labels)
        assert online == offline


def test_a_risk_label_that_is_no_risk_level_fails_as_the_reference_does() -> None:
    labels = LabelMaps(response_risk=("Safe", "Unsafe", "Weird"))
    judge = Judge(labels, PolicyBook(), "m")
    state = ConversationState("c", None, "k")
    record = MessageScoring(0, "assistant")
    out = HeadOutputs(np.array([[0, 0, 9]], dtype=np.float32), np.zeros((1, 8), dtype=np.float32),
                      np.zeros((1, 3), dtype=np.float32), np.zeros((1, 9), dtype=np.float32))
    with pytest.raises(ValueError, match="Weird"):
        judge.judge(state, out, Taken([ScoredRows(record, [0], array("I", [0, 1]))], []), 0)


def test_the_batched_softmax_equals_the_reference_softmax_bit_for_bit() -> None:
    """The debounce keeps the last token's scores: the batched softmax must give the reference's."""
    rng = np.random.default_rng(7)
    judge = Judge(LabelMaps(), PolicyBook(), "m")
    for scale in (0.1, 1.0, 10.0, 60.0):
        logits = (rng.normal(size=(400, 3)) * scale).astype(np.float32)
        out = HeadOutputs(logits, np.zeros((400, 8), dtype=np.float32), np.zeros((400, 3), dtype=np.float32),
                          np.zeros((400, 9), dtype=np.float32))
        answers = [(out, Taken([ScoredRows(MessageScoring(0, "assistant"), [row], array("I", [0, 1]))], []))
                   for row in range(400)]
        got = [labels[0].last_scores for labels in judge.argmax_batch(answers)]   # type: ignore[union-attr]
        assert got == [softmax_scores(logits[row], LabelMaps().response_risk) for row in range(400)]
