"""Per-tenant thresholds: the default is the official rule, ties and rounding are pinned, the stream
Scorer applies a tenant's rule, and the sweep's numpy form equals the online debouncer."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.decision import OFFICIAL_RULE, ResponseDebouncer, ThresholdRule, TokenJudgement
from pipeline.errors import UserError
from pipeline.eval.sweep import rule_outcome
from pipeline.policy import load_policy_book

NAMES = ("safe", "unsafe", "controversial")


def token(p_safe: float, p_unsafe: float, p_controversial: float) -> TokenJudgement:
    scores = {"safe": p_safe, "unsafe": p_unsafe, "controversial": p_controversial}
    risk = max(NAMES, key=lambda k: (scores[k], -NAMES.index(k)))
    return TokenJudgement(risk, "Violent", scores)  # type: ignore[arg-type]


def official(labels: list[str]) -> tuple[str, int | None]:
    for level in ("unsafe", "controversial"):
        for i in range(1, len(labels)):
            if labels[i - 1] == labels[i] == level:
                return level, i
    return "safe", None


def run(tokens: list[TokenJudgement], rule: ThresholdRule) -> tuple[str, int | None]:
    debouncer = ResponseDebouncer()
    for t in tokens:
        debouncer.push(t, rule)
    decision = debouncer.decision()
    return decision.risk, decision.token_index if decision.risk != "safe" else None


probabilities = st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100), st.integers(0, 100)),
                         min_size=0, max_size=30)


def as_tokens(raw: list[tuple[int, int, int]]) -> list[TokenJudgement]:
    out = []
    for a, b, c in raw:
        total = a + b + c or 1
        out.append(token(round(a / total, 4), round(b / total, 4), round(c / total, 4)))
    return out


@given(probabilities)
@settings(max_examples=150, deadline=None)
def test_default_rule_is_the_official_argmax_pair_rule(raw: list[tuple[int, int, int]]) -> None:
    tokens = as_tokens(raw)
    assert run(tokens, OFFICIAL_RULE) == official([t.risk for t in tokens])


@given(probabilities, st.sampled_from([None, 0.3, 0.5, 0.6]), st.sampled_from([None, 0.5, 0.8]),
       st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_sweep_numpy_form_equals_the_online_debouncer(raw: list[tuple[int, int, int]], unsafe: float | None,
                                                      risky: float | None, debounce: int) -> None:
    tokens = as_tokens(raw)
    rule = ThresholdRule(unsafe, risky, debounce)
    codes = {"safe": 0, "unsafe": 1, "controversial": 2}
    argmax = np.asarray([codes[t.risk] for t in tokens], dtype=np.int8)
    scores = np.asarray([[t.scores[k] for k in NAMES] for t in tokens], dtype=np.float64).reshape(len(tokens), 3)
    outcome = rule_outcome(argmax, scores, rule, range(len(tokens)))
    debouncer = ResponseDebouncer()
    for t in tokens:
        debouncer.push(t, rule)
    assert outcome.risk == debouncer.decision().risk
    assert outcome.first_unsafe == (debouncer.first_unsafe.token_index if debouncer.first_unsafe else None)
    assert outcome.first_controversial == (
        debouncer.first_controversial.token_index if debouncer.first_controversial else None)


def test_threshold_ties_count_and_the_sum_is_rounded() -> None:
    rule = ThresholdRule(unsafe_threshold=0.6, risky_threshold=0.8)
    assert rule.label(token(0.4, 0.6, 0.0)).risk == "unsafe"          # exactly at the threshold
    assert rule.label(token(0.4001, 0.5999, 0.0)).risk == "safe"
    assert rule.label(token(0.2, 0.7, 0.1)).risk == "unsafe"
    assert rule.label(token(0.2, 0.5, 0.3)).risk == "controversial"   # 0.5 + 0.3 reaches 0.8
    assert rule.label(token(0.2, 0.1, 0.7)).risk == "controversial"   # 0.1 + 0.7 is 0.7999999... in floats
    assert rule.label(token(0.21, 0.1, 0.69)).risk == "safe"          # argmax controversial, below both


def test_raising_the_unsafe_threshold_demotes_to_controversial_not_safe() -> None:
    rule = ThresholdRule(unsafe_threshold=0.9)
    assert rule.label(token(0.2, 0.7, 0.1)).risk == "controversial"
    assert rule.label(token(0.7, 0.2, 0.1)).risk == "safe"


def test_debounce_length_three_needs_three_in_a_row() -> None:
    u, s = token(0.1, 0.9, 0.0), token(0.9, 0.1, 0.0)
    rule = ThresholdRule(debounce_tokens=3)
    assert run([u, u, s, u, u, s], rule) == ("safe", None)
    assert run([u, u, s, u, u, u, s], rule) == ("unsafe", 5)
    assert run([u, s], ThresholdRule(debounce_tokens=1)) == ("unsafe", 0)


def test_a_state_saved_before_the_run_counter_still_pairs() -> None:
    u = token(0.1, 0.9, 0.0)
    old = msgspec.msgpack.encode({"count": 1, "previous": "unsafe", "last_scores": u.scores})
    restored = msgspec.msgpack.decode(old, type=ResponseDebouncer)
    event = restored.push(u)
    assert event is not None and (event.risk, event.token_index) == ("unsafe", 1)


def test_invalid_rules_are_refused() -> None:
    with pytest.raises(ValueError):
        ThresholdRule(unsafe_threshold=1.5)
    with pytest.raises(ValueError):
        ThresholdRule(debounce_tokens=0)


def test_policy_file_sets_a_tenant_rule(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("default: strict\ntenants:\n  support: {mode: loose, unsafe_threshold: 0.6, "
                    "risky_threshold: 0.8, debounce_tokens: 3}\n  acme: strict\n")
    book = load_policy_book(str(path))
    assert book.for_tenant("support").rule == ThresholdRule(0.6, 0.8, 3)
    assert book.for_tenant("support").mode == "loose"
    assert book.for_tenant("acme").rule == OFFICIAL_RULE
    assert book.default.rule == OFFICIAL_RULE


@pytest.mark.parametrize(("body", "problem"), [
    ("{unsafe_threshold: 1.2}", "between 0 and 1"),
    ("{unsafe_threshold: yes}", "between 0 and 1"),
    ("{risky_threshold: '0.5'}", "between 0 and 1"),
    ("{debounce_tokens: 0}", "debounce_tokens"),
    ("{debounce_tokens: 2.5}", "debounce_tokens"),
    ("{unsafe_treshold: 0.5}", "unknown key(s) unsafe_treshold"),
])
def test_bad_thresholds_say_what_is_wrong(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(f"tenants:\n  t: {body}\n")
    with pytest.raises(UserError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load_policy_book(str(path))
