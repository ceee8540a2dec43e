"""The eval metrics on hand-computed cases: every timing bin and its edges, strict vs loose, empty sets."""

from __future__ import annotations

import pytest

from pipeline.eval.metrics import (
    BINS,
    Outcome,
    classification,
    confusion,
    detection_index,
    detection_position,
    percentiles,
    timing,
    timing_bin,
)


def test_strict_counts_controversial_as_unsafe_and_loose_as_safe_not_swapped() -> None:
    # The report's script prints these two swapped; here "strict" must be the stricter policy.
    gold = ["unsafe", "safe", "unsafe", "safe"]
    predicted = ["controversial", "controversial", "safe", "safe"]
    strict = classification(gold, predicted, "strict")
    loose = classification(gold, predicted, "loose")
    assert (strict.tp, strict.fp, strict.fn, strict.tn) == (1, 1, 1, 1)
    assert (strict.precision, strict.recall, strict.f1) == (0.5, 0.5, 0.5)
    assert (loose.tp, loose.fp, loose.fn, loose.tn) == (0, 0, 2, 2)
    assert (loose.precision, loose.recall, loose.f1) == (None, 0.0, 0.0)


def test_hand_computed_precision_recall_f1() -> None:
    gold = ["unsafe"] * 4 + ["safe"] * 6
    predicted = ["unsafe", "unsafe", "unsafe", "safe", "unsafe", "unsafe", "safe", "safe", "safe", "safe"]
    c = classification(gold, predicted, "loose")
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 2, 1, 4)
    assert c.precision == pytest.approx(3 / 5)
    assert c.recall == pytest.approx(3 / 4)
    assert c.f1 == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))


def test_gold_controversial_follows_the_policy_too() -> None:
    assert classification(["controversial"], ["unsafe"], "strict").tp == 1
    assert classification(["controversial"], ["unsafe"], "loose").fp == 1


def test_empty_and_degenerate_sets_give_none_not_a_division_error() -> None:
    c = classification([], [], "strict")
    assert (c.tp, c.fp, c.fn, c.tn, c.precision, c.recall, c.f1) == (0, 0, 0, 0, None, None, None)
    all_safe = classification(["safe", "safe"], ["safe", "safe"], "strict")
    assert (all_safe.precision, all_safe.recall, all_safe.f1, all_safe.tn) == (None, None, None, 2)
    t = timing([])
    assert (t.total, t.exact_hit, t.within_128) == (0, None, None)
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None}
    with pytest.raises(ValueError):
        classification(["safe"], [], "strict")


@pytest.mark.parametrize(("position", "expected"), [
    (None, "missed"), (0, "Ahead"), (9, "Ahead"), (10, "Hit"), (15, "Hit"), (20, "Hit"),
    (21, "1-32"), (52, "1-32"), (53, "33-64"), (84, "33-64"), (85, "65-128"), (148, "65-128"),
    (149, "129-256"), (276, "129-256"), (277, ">256"), (10_000, ">256"),
])
def test_every_timing_bin_and_its_edges(position: int | None, expected: str) -> None:
    assert timing_bin(position, 10, 20) == expected


def test_single_token_sentence_hits_only_at_that_token() -> None:
    assert [timing_bin(p, 5, 5) for p in (4, 5, 6)] == ["Ahead", "Hit", "1-32"]


def test_timing_rates_count_ahead_and_up_to_128_after() -> None:
    bins = ["Ahead", "Hit", "Hit", "1-32", "33-64", "65-128", "129-256", ">256", "missed", "missed"]
    t = timing(bins)
    assert t.total == 10
    assert t.counts == {"Ahead": 1, "Hit": 2, "1-32": 1, "33-64": 1, "65-128": 1, "129-256": 1, ">256": 1,
                        "missed": 2}
    assert list(t.counts) == list(BINS)
    assert t.exact_hit == pytest.approx(0.2)
    assert t.within_128 == pytest.approx(0.6)
    with pytest.raises(ValueError):
        timing(["late"])


def test_detection_modes_pick_the_first_blocking_run() -> None:
    both = Outcome("unsafe", first_unsafe=7, first_controversial=3, positions=tuple(range(100, 110)))
    assert detection_index(both, "strict") == 3      # a strict tenant blocks at the controversial run
    assert detection_index(both, "loose") == 7
    assert detection_index(both, "report") == 7      # the offline rule's deciding token
    assert detection_position(both, "strict") == 103
    only_controversial = Outcome("controversial", None, 4, tuple(range(10)))
    assert detection_index(only_controversial, "loose") is None
    assert detection_index(only_controversial, "report") == 4
    assert detection_index(only_controversial, "strict") == 4
    unsafe_first = Outcome("unsafe", 2, 5, tuple(range(10)))
    assert detection_index(unsafe_first, "strict") == 2
    nothing = Outcome("safe", positions=(1, 2))
    assert all(detection_position(nothing, m) is None for m in ("strict", "loose", "report"))  # type: ignore[arg-type]


def test_confusion_rows_are_gold_columns_predicted() -> None:
    matrix = confusion(["safe", "unsafe", "unsafe", "controversial"], ["unsafe", "unsafe", "safe", "controversial"])
    assert matrix == [[0, 0, 1], [0, 1, 0], [1, 0, 1]]


def test_percentiles_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentiles(values) == {"p50": 50, "p95": 95, "p99": 99, "max": 100}
    assert percentiles([7.0])["p50"] == 7.0
