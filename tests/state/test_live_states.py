"""The stream worker's in-memory conversation states (workers.stream.live_states): what may be used
from memory, and what must be read from Redis again."""

from __future__ import annotations

from pipeline.scoring.state import ConversationState
from workers.stream.live_states import LiveStates, usable_age_s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state(name: str) -> ConversationState:
    return ConversationState(name, None, name)


def test_a_state_is_used_from_memory_only_while_younger_than_its_redis_ttl_allows() -> None:
    clock = Clock()
    live = LiveStates(10, max_age_s=usable_age_s(2), clock=clock)
    a = state("a")
    live.store({"a": a}, {})
    live.written()
    clock.now += 0.9
    assert live.get("a") is a
    clock.now += 0.2   # past TTL 2 s minus its 1 s margin: Redis may have expired it soon
    assert live.get("a") is None
    assert "a" not in live


def test_usable_age_keeps_a_margin_below_the_ttl() -> None:
    assert usable_age_s(2) == 1.0
    assert usable_age_s(86400) == 77760.0
    assert usable_age_s(5) == 4.0
    assert usable_age_s(1) == 0.0


def test_a_state_whose_write_has_not_landed_never_ages_out() -> None:
    clock = Clock()
    live = LiveStates(10, max_age_s=1.0, clock=clock)
    a = state("a")
    live.store({"a": a}, {})
    clock.now += 60   # a slow commit: Redis does not hold this state yet, memory is the only copy
    assert live.get("a") is a
    live.written()
    assert live.get("a") is None


def test_trimming_evicts_the_oldest_but_never_the_newest_batch() -> None:
    live = LiveStates(2, max_age_s=3600, clock=Clock())
    live.store({"a": state("a"), "b": state("b")}, {})
    live.written()
    live.store({"c": state("c")}, {})
    assert "a" not in live and "b" in live and "c" in live
    big = {k: state(k) for k in "defg"}
    live.store(big, {})
    assert len(live) == 4 and all(k in live for k in "defg")


def test_a_dropped_conversation_is_read_from_redis_again_and_clear_forgets_everything() -> None:
    live = LiveStates(10, max_age_s=3600, clock=Clock())
    live.store({"a": state("a"), "b": state("b")}, {})
    live.store({}, {"a": None})
    assert live.get("a") is None and live.get("b") is not None
    live.clear()
    assert len(live) == 0 and live.get("b") is None
