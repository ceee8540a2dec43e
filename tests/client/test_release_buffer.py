"""The client library's release rules: guarded mode shows only cleared text; optimistic retracts on a block."""

from __future__ import annotations

from typing import Any

from pipeline.client.release import ReleaseBuffer
from schemas.messages import Verdict


def verdict(kind: str, action: str = "allow", cleared: int | None = None, risk: str = "safe") -> Verdict:
    fields: dict[str, Any] = {}
    if cleared is not None:
        fields["cleared_through_seq"] = cleared
    return Verdict(verdict_id=f"c/0/stream/{kind}/{cleared}", conversation_id="c", message_index=0,
                   role="assistant", source="stream", kind=kind, risk=risk, action=action,  # type: ignore[arg-type]
                   model="m", ts_ms=0, **fields)


def test_guarded_mode_releases_only_cleared_chunks_in_order() -> None:
    buf = ReleaseBuffer("guarded")
    shown = [buf.write(t)[1].released for t in ("Hel", "lo ", "wor", "ld")]
    assert shown == ["", "", "", ""]
    assert buf.on_verdict(verdict("progress", cleared=1)).released == "Hello "
    assert buf.on_verdict(verdict("progress", cleared=1)).released == ""
    assert buf.pending_text == "world"
    assert buf.on_verdict(verdict("final", cleared=3)).released == "world"


def test_guarded_mode_never_releases_after_a_block() -> None:
    buf = ReleaseBuffer("guarded")
    for text in ("a", "b", "c"):
        buf.write(text)
    block = verdict("flag", action="block", risk="unsafe")
    event = buf.on_verdict(block)
    assert event.blocked == block and not event.retracted and event.released == ""
    assert buf.on_verdict(verdict("progress", cleared=2)).released == ""
    assert buf.write("d")[1].released == ""


def test_optimistic_mode_shows_at_once_and_retracts_on_block() -> None:
    buf = ReleaseBuffer("optimistic")
    assert buf.write("Sure, ")[1].released == "Sure, "
    block = verdict("flag", action="block", risk="unsafe")
    event = buf.on_verdict(block)
    assert event.retracted and event.blocked == block and event.final is None
    assert buf.write("more")[1].released == ""


def test_allowing_final_verdict_releases_the_rest_even_without_watermark() -> None:
    buf = ReleaseBuffer("guarded")
    for text in ("x", "y"):
        buf.write(text)
    final = verdict("final")
    event = buf.on_verdict(final)
    assert event.released == "xy" and event.final == final and event.blocked is None
