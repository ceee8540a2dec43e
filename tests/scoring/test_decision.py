"""The Qwen3Guard decision rules (docs/model.md §5): prompt argmax, response debounce offline and online."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pipeline.decision import ResponseDebouncer, decide_prompt, decide_response, judge_tokens
from pipeline.labels import LabelMaps

LABELS = LabelMaps()
INDEX = {"safe": 0, "unsafe": 1, "controversial": 2}   # the official risk order


def logits_for(risks: list[str], categories: list[int] | None = None, width: int = 8) -> tuple[np.ndarray, np.ndarray]:
    risk = np.zeros((len(risks), 3), dtype=np.float32)
    category = np.zeros((len(risks), width), dtype=np.float32)
    for i, name in enumerate(risks):
        risk[i, INDEX[name]] = 3.0
        category[i, (categories or [i % width for i in range(len(risks))])[i]] = 2.0
    return risk, category


def official_rule(labels: list[str]) -> tuple[str, int | None]:
    """eval_stream.py's rule, written out plainly: the reference the implementation must equal."""
    for level in ("unsafe", "controversial"):
        for i in range(1, len(labels)):
            if labels[i - 1] == level and labels[i] == level:
                return level, i
    return "safe", None


def test_unsafe_pair_after_a_controversial_pair_decides_unsafe_at_the_unsafe_pair() -> None:
    labels = ["safe", "controversial", "controversial", "safe", "unsafe", "unsafe", "safe"]
    decision = decide_response(*logits_for(labels, [0, 1, 2, 3, 4, 5, 6]), LABELS)
    assert (decision.risk, decision.token_index) == ("unsafe", 5)
    assert decision.category == "Copyright Violation"   # the category of token 5, not of the first pair
    assert decision.token_labels == labels


def test_deciding_category_is_the_second_token_of_the_pair_in_long_names() -> None:
    decision = decide_response(*logits_for(["unsafe", "unsafe"], [0, 2]), LABELS)
    assert decision.category == "Suicide & Self-Harm"


def test_mixed_unsafe_controversial_pairs_do_not_trigger() -> None:
    decision = decide_response(*logits_for(["unsafe", "controversial", "unsafe", "controversial", "unsafe"]), LABELS)
    assert decision.risk == "safe" and decision.category is None


def test_a_single_flagged_token_is_not_enough() -> None:
    decision = decide_response(*logits_for(["safe", "unsafe", "safe", "controversial"]), LABELS)
    assert decision.risk == "safe"


def test_safe_response_reports_its_last_token_and_its_scores() -> None:
    risk, category = logits_for(["safe", "safe", "safe"])
    risk[2] = [1.0, 0.5, 0.0]
    decision = decide_response(risk, category, LABELS)
    assert decision.token_index == 2
    expected = np.exp([1.0, 0.5, 0.0]) / np.exp([1.0, 0.5, 0.0]).sum()
    assert decision.scores == {"safe": round(expected[0], 4), "unsafe": round(expected[1], 4),
                               "controversial": round(expected[2], 4)}


def test_empty_response_is_safe_with_no_deciding_token() -> None:
    decision = decide_response(np.zeros((0, 3)), np.zeros((0, 8)), LABELS)
    assert (decision.risk, decision.token_index, decision.scores, decision.token_labels) == ("safe", None, {}, [])


def test_prompt_is_the_argmax_at_im_end_with_jailbreak_category() -> None:
    risk, category = logits_for(["controversial"], [8], width=9)
    decision = decide_prompt(risk, category, LABELS)
    assert (decision.risk, decision.category, decision.token_index) == ("controversial", "Jailbreak", 0)
    safe = decide_prompt(*logits_for(["safe"], [8], width=9), LABELS)
    assert safe.category is None and safe.token_labels == ["safe"]


def test_label_maps_from_the_checkpoint_decide_the_names() -> None:
    swapped = LabelMaps(response_risk=("Safe", "Controversial", "Unsafe"))
    risk, category = logits_for(["unsafe", "unsafe"])      # index 1 twice
    assert decide_response(risk, category, swapped).risk == "controversial"


def test_online_debouncer_flags_the_first_pair_then_escalates_once() -> None:
    labels = ["controversial", "controversial", "controversial", "unsafe", "unsafe", "unsafe", "unsafe"]
    debouncer = ResponseDebouncer()
    events = [debouncer.push(t) for t in judge_tokens(*logits_for(labels), LABELS.response_risk,
                                                      LABELS.response_category)]
    fired = [(i, e.risk) for i, e in enumerate(events) if e is not None]
    assert fired == [(1, "controversial"), (4, "unsafe")]
    assert debouncer.decision().token_index == 4


@given(st.lists(st.sampled_from(["safe", "unsafe", "controversial"]), max_size=30))
def test_offline_and_online_rules_equal_the_official_rule(labels: list[str]) -> None:
    risk, category = logits_for(labels)
    decision = decide_response(risk, category, LABELS)
    expected_risk, expected_index = official_rule(labels)
    assert decision.risk == expected_risk
    if expected_index is not None:
        assert decision.token_index == expected_index
    debouncer = ResponseDebouncer()
    flags = [e for e in (debouncer.push(t) for t in judge_tokens(risk, category, LABELS.response_risk,
                                                                 LABELS.response_category)) if e is not None]
    assert debouncer.decision(labels) == decision
    # Online flags never contradict the end: the last flag is the final decision's pair.
    if flags:
        assert (flags[-1].risk, flags[-1].token_index) == (decision.risk, decision.token_index)
    else:
        assert decision.risk == "safe"
