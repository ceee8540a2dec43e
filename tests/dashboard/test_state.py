"""The dashboard's aggregation: what a message looks like, counts, rates, and every bound."""

from __future__ import annotations

from typing import Any

from pipeline.dashboard.state import (
    MAX_CHUNKS_PER_MESSAGE,
    MAX_FIELD_CHARS,
    MAX_LABELS,
    MAX_MARKS,
    MAX_RENDERED_CHUNKS,
    OTHER,
    DashboardState,
    ViewLimits,
)
from schemas.messages import MAX_SEQ, TokenDelta, Verdict

WORDS = ["Hello ", "there, ", "here is ", "how to ", "make a ", "bomb ", "at home"]


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def verdict(cid: str = "c1", index: int = 1, kind: str = "final", risk: str = "safe", action: str = "allow",
            role: str = "assistant", source: str = "stream", **extra: Any) -> Verdict:
    position = extra.pop("position", extra.get("token_index", "end"))
    return Verdict(verdict_id=f"{cid}/{index}/{source}/{kind}/{position}", conversation_id=cid, message_index=index,
                   role=role, source=source, kind=kind, risk=risk, action=action, model="m", ts_ms=1, **extra)


def deltas(cid: str = "c1", index: int = 1, role: str = "assistant", words: list[str] = WORDS,
           tenant: str | None = "acme") -> list[TokenDelta]:
    return [TokenDelta(conversation_id=cid, message_index=index, role=role, seq=i, text=w, tenant=tenant,
                       final=i == len(words) - 1) for i, w in enumerate(words)]


def state(**limits: Any) -> DashboardState:
    return DashboardState(ViewLimits(**limits), Clock())


def message(s: DashboardState, cid: str = "c1", index: int = 0) -> dict[str, Any]:
    detail = s.detail(cid)
    assert detail is not None
    return detail["message_list"][index]


def offset_of(word: str) -> int:
    return len("".join(WORDS[: WORDS.index(word)]))


def test_without_text_tokens_are_positions_up_to_the_highest_seq_a_verdict_names() -> None:
    s = state(show_text=False)
    for d in deltas():
        s.apply_delta(d)   # read only when text is shown; even so, no text is kept
    s.apply_verdict(verdict(kind="progress", cleared_through_seq=2, token_index=15, position=15))
    m = message(s)
    assert [p["seq"] for p in m["pieces"]] == list(range(len(WORDS)))
    assert all(p["text"] is None for p in m["pieces"])
    assert [p["judged"] for p in m["pieces"]] == [True, True, True, False, False, False, False]
    assert m["cleared_through_seq"] == 2
    assert "bomb" not in repr(s.detail("c1"))


def test_verdicts_alone_give_placeholders_for_the_chunks_they_name() -> None:
    s = state()
    s.apply_verdict(verdict(kind="progress", cleared_through_seq=4, token_index=15, position=15))
    m = message(s)
    assert len(m["pieces"]) == 5 and all(p["text"] is None and p["n"] is None for p in m["pieces"])


def test_a_blocking_flag_cuts_its_chunk_at_the_token_and_colours_and_withholds_what_follows() -> None:
    s = state(show_text=True)
    for d in deltas():
        s.apply_delta(d)
    s.apply_verdict(verdict(kind="progress", cleared_through_seq=2, token_index=15, position=15))
    s.apply_verdict(verdict(kind="flag", risk="unsafe", action="block", category="Violent", token_index=20,
                            seq=5, char_offset=offset_of("bomb ") + 2))
    pieces = message(s)["pieces"]
    texts = [p["text"] for p in pieces]
    assert "".join(texts) == "".join(WORDS)
    assert texts[5:7] == ["bo", "mb "]
    blocked = [p for p in pieces if p.get("blocking")]
    assert [p["text"] for p in blocked] == ["mb "]
    assert blocked[0]["marks"][0]["kind"] == "flag" and blocked[0]["marks"][0]["category"] == "Violent"
    by_text = {p["text"]: p for p in pieces}
    assert by_text["bo"]["risk"] == "safe" and not by_text["bo"]["withheld"]
    assert by_text["mb "]["risk"] == by_text["at home"]["risk"] == "unsafe"
    assert by_text["mb "]["withheld"] and by_text["at home"]["withheld"]
    # The flag judged every token up to its own; later chunks are not judged yet.
    assert by_text["make a "]["judged"] and not by_text["at home"]["judged"]


def test_an_allowed_controversial_flag_colours_but_withholds_nothing() -> None:
    s = state(show_text=True)
    for d in deltas():
        s.apply_delta(d)
    s.apply_verdict(verdict(kind="flag", risk="controversial", action="allow", token_index=9, seq=3,
                            char_offset=offset_of("how to ")))
    s.apply_verdict(verdict(risk="controversial", category="Politically Sensitive Topics", token_index=9, seq=3,
                            char_offset=offset_of("how to "), cleared_through_seq=6))
    m = message(s)
    by_text = {p["text"]: p for p in m["pieces"]}
    assert by_text["here is "]["risk"] == "safe" and by_text["how to "]["risk"] == "controversial"
    assert not any(p["withheld"] for p in m["pieces"]) and all(p["judged"] for p in m["pieces"])
    kinds = [mark["kind"] for p in m["pieces"] for mark in p.get("marks", [])]
    assert kinds == ["flag", "final"]
    assert m["stream_final"]["category"] == "Politically Sensitive Topics"


def test_a_blocked_prompt_is_withheld_and_coloured_as_a_whole() -> None:
    s = state(show_text=True)
    for d in deltas(index=0, role="user", words=["how do I ", "build a ", "weapon"]):
        s.apply_delta(d)
    s.apply_verdict(verdict(index=0, role="user", risk="unsafe", action="block", category="Violent",
                            token_index=0, seq=2, char_offset=len("how do I build a weapon")))
    m = message(s)
    assert all(p["risk"] == "unsafe" and p["withheld"] for p in m["pieces"])
    # The prompt's deciding token is its end marker: the mark sits after the text.
    assert m["pieces"][-1]["text"] == "" and m["pieces"][-1]["blocking"]
    summary = s.summary("c1")
    assert summary is not None and summary["blocked"] and summary["risk"] == "unsafe"


def test_the_generative_ruling_sits_beside_the_stream_final() -> None:
    s = state()
    s.apply_verdict(verdict(cleared_through_seq=3, token_index=20, seq=3, char_offset=40))
    s.apply_verdict(verdict(source="generative", risk="controversial", categories=["Jailbreak"], refusal=False,
                            latency_ms=900))
    m = message(s)
    assert m["stream_final"]["risk"] == "safe"
    assert m["generative"] == {**m["generative"], "risk": "controversial", "categories": ["Jailbreak"],
                               "refusal": False, "source": "generative"}
    # The generative ruling adds no mark to the tokens (it judges the whole message).
    assert [mark["source"] for p in m["pieces"] for mark in p.get("marks", [])] == ["stream"]
    assert s.summary("c1")["risk"] == "controversial"   # type: ignore[index]


def test_counts_by_risk_category_and_tenant_count_each_final_once() -> None:
    s = state()
    s.apply_verdict(verdict(cid="a", risk="unsafe", action="block", category="Violent", tenant="acme"))
    s.apply_verdict(verdict(cid="a", risk="unsafe", action="block", category="Violent", tenant="acme"))  # redelivery
    s.apply_verdict(verdict(cid="b", risk="safe", tenant="beta"))
    s.apply_verdict(verdict(cid="c", risk="controversial", category="Jailbreak"))
    s.apply_verdict(verdict(cid="c", kind="progress", cleared_through_seq=1, token_index=15, position=15))
    counts = s.stats()["counts"]["stream"]
    assert counts["risk"] == {"safe": 1, "controversial": 1, "unsafe": 1}
    assert counts["category"] == {"Violent": 1, "Jailbreak": 1}
    assert counts["tenant"] == {"acme": {"safe": 0, "controversial": 0, "unsafe": 1},
                                "beta": {"safe": 1, "controversial": 0, "unsafe": 0},
                                "(default)": {"safe": 0, "controversial": 1, "unsafe": 0}}
    assert counts["blocked"] == 1


def test_rates_and_latency_percentiles_cover_the_recent_window() -> None:
    clock = Clock()
    s = DashboardState(ViewLimits(), clock)
    for i in range(100):
        s.apply_verdict(verdict(cid=f"c{i}", latency_ms=i, kind="progress", cleared_through_seq=0, token_index=15,
                                position=15))
    s.apply_verdict(verdict(source="generative", latency_ms=1234))
    clock.t += 1
    stats = s.stats()
    assert stats["verdicts_per_s"] == {"stream": 10.0, "generative": 0.1}
    assert stats["latency_ms"]["stream"] == {"n": 100, "p50": 50, "p90": 90, "p99": 99}
    assert stats["latency_ms"]["generative"]["p50"] == 1234
    clock.t += 60
    assert s.stats()["verdicts_per_s"] == {"stream": 0.0, "generative": 0.0}


def test_filters_by_tenant_and_minimum_risk() -> None:
    s = state()
    s.apply_verdict(verdict(cid="a", risk="unsafe", action="block", tenant="acme"))
    s.apply_verdict(verdict(cid="b", risk="controversial", tenant="acme"))
    s.apply_verdict(verdict(cid="c", risk="safe", tenant="beta"))
    s.apply_verdict(verdict(cid="d", risk="safe"))
    ids = lambda **f: [c["id"] for c in s.list_conversations(**f)]   # noqa: E731
    assert ids() == ["d", "c", "b", "a"]
    assert ids(tenant="acme") == ["b", "a"]
    assert ids(risk="controversial") == ["b", "a"]
    assert ids(tenant="acme", risk="unsafe") == ["a"]
    assert ids(tenant="(default)") == ["d"]


def test_least_recently_updated_conversations_are_dropped_first_and_reported() -> None:
    s = state(max_conversations=3)
    for cid in ("a", "b", "c"):
        s.apply_verdict(verdict(cid=cid))
    s.drain_changes()
    s.apply_verdict(verdict(cid="a", index=2))     # a is fresh again
    s.apply_verdict(verdict(cid="d"))
    assert list(s.conversations) == ["c", "a", "d"]
    changed, removed = s.drain_changes()
    assert sorted(changed) == ["a", "d"] and removed == ["b"]
    assert s.stats()["evicted"] == 1


def test_only_the_latest_messages_of_a_conversation_are_kept() -> None:
    s = state(max_messages=2)
    for index in (3, 1, 2, 5, 0):
        s.apply_verdict(verdict(index=index))
    detail = s.detail("c1")
    assert detail is not None and [m["index"] for m in detail["message_list"]] == [3, 5]


def test_text_past_the_per_message_cap_is_kept_as_its_length_only() -> None:
    s = state(show_text=True, max_message_chars=23)
    for d in deltas(words=[*WORDS[:3], "a long chunk that does not fit", "short"]):
        s.apply_delta(d)
    pieces = message(s)["pieces"]
    assert [p["text"] for p in pieces] == [*WORDS[:3], None, None]   # a prefix, never a gap
    assert pieces[3]["n"] == len("a long chunk that does not fit") and pieces[4]["n"] == len("short")


def test_hostile_positions_and_strings_stay_bounded() -> None:
    s = state(show_text=True)
    s.apply_verdict(verdict(kind="progress", cleared_through_seq=MAX_SEQ, token_index=15, position=15,
                            tenant="t" * 128))
    long = "x" * 100_000
    s.apply_verdict(Verdict(verdict_id=long, conversation_id="c1", message_index=1, role="assistant",
                            source="stream", kind="flag", risk="unsafe", action="block", model=long, ts_ms=1,
                            category=long, categories=[long] * 1000, seq=MAX_SEQ, char_offset=2**62, token_index=1))
    m = message(s)
    assert len(m["pieces"]) <= MAX_RENDERED_CHUNKS + 1 and m["hidden_chunks"] == MAX_SEQ + 1 - MAX_RENDERED_CHUNKS
    (mark,) = [mk for p in m["pieces"] for mk in p.get("marks", [])]   # past the shown range: at the tail
    assert len(mark["verdict_id"]) <= MAX_FIELD_CHARS and len(mark["category"]) <= MAX_FIELD_CHARS
    assert len(mark["categories"]) <= 8
    for i in range(MAX_MARKS * 3):
        s.apply_verdict(verdict(kind="flag", risk="unsafe", action="block", token_index=i, seq=0, char_offset=0))
    assert sum(len(p.get("marks", [])) for p in message(s)["pieces"]) == MAX_MARKS


def test_chunks_per_message_are_capped() -> None:
    s = state(show_text=True)
    for seq in range(MAX_CHUNKS_PER_MESSAGE + 10):
        s.apply_delta(TokenDelta(conversation_id="c1", message_index=1, role="assistant", seq=seq, text="a"))
    m = message(s)
    assert m["dropped_chunks"] == 10 and s.total_chunks == MAX_CHUNKS_PER_MESSAGE
    assert len(m["pieces"]) == MAX_RENDERED_CHUNKS and m["hidden_chunks"] == 10


def test_label_sets_fold_into_other() -> None:
    s = state()
    for i in range(MAX_LABELS + 20):
        s.apply_verdict(verdict(cid=f"c{i}", risk="unsafe", action="block", category=f"cat{i}", tenant=f"t{i}"))
    counts = s.stats()["counts"]["stream"]
    assert len(counts["category"]) == MAX_LABELS + 1 and counts["category"][OTHER] == 20
    assert len(counts["tenant"]) == MAX_LABELS + 1 and counts["tenant"][OTHER]["unsafe"] == 20


def test_redelivered_deltas_and_end_records() -> None:
    s = state(show_text=True)
    for d in deltas() + deltas():
        s.apply_delta(d)
    s.apply_delta(TokenDelta(conversation_id="c1", type="end"))
    assert "".join(p["text"] for p in message(s)["pieces"]) == "".join(WORDS)
    assert s.summary("c1")["ended"] is True   # type: ignore[index]
    assert s.total_chunks == len(WORDS)


def test_past_the_total_chunk_budget_the_least_recent_conversations_go(monkeypatch: Any) -> None:
    import pipeline.dashboard.state as module

    monkeypatch.setattr(module, "MAX_CHUNKS_TOTAL", 10)
    s = state(show_text=True)
    for cid in ("a", "b", "c"):
        for d in deltas(cid=cid, words=["w "] * 4):
            s.apply_delta(d)
    assert list(s.conversations) == ["b", "c"] and s.total_chunks == 8
    assert s.drain_changes()[1] == ["a"]
