"""`guardstream watch`'s lines: columns line up, each category shown once, trailing fields explained."""

from __future__ import annotations

import io

from rich.console import Console

from schemas.messages import Verdict
from workers.cli import build_parser
from workers.commands.watch import format_verdict


def _plain(v: Verdict) -> str:
    out = io.StringIO()
    Console(file=out, no_color=True, width=400, highlight=False, soft_wrap=True).print(format_verdict(v))
    return out.getvalue().rstrip("\n")


VERDICTS = [
    Verdict(verdict_id="a", conversation_id="c1", message_index=0, role="user", source="stream", kind="final",
            risk="safe", action="allow", model="m", ts_ms=1_700_000_000_000, token_index=0, latency_ms=9),
    Verdict(verdict_id="b", conversation_id="chat-long-name-1", message_index=12, role="assistant",
            source="generative", kind="flag", risk="controversial", action="block", model="m",
            ts_ms=1_700_000_000_123, category="Violent", categories=["Violent"], token_index=7, seq=7,
            char_offset=26, latency_ms=140),
    Verdict(verdict_id="c", conversation_id="c2", message_index=3, role="system", source="stream", kind="progress",
            risk="unsafe", action="block", model="m", ts_ms=1_700_000_000_999, cleared_through_seq=4),
]


def test_fixed_columns_line_up_whatever_the_values() -> None:
    lines = [_plain(v) for v in VERDICTS]
    for column in ("stream", "generative"):
        starts = {line.index(column) for line in lines if column in line}
        assert len(starts) <= 1
    source_at = {line.index("stream") if "stream" in line else line.index("generative") for line in lines}
    risk_at = {min(line.find(r) for r in ("SAFE", "CONTROVERSIAL", "UNSAFE") if r in line) for line in lines}
    action_at = {min(i for i in (line.find(" allow"), line.find(" block")) if i >= 0) for line in lines}
    assert len(source_at) == len(risk_at) == len(action_at) == 1, lines


def test_a_category_is_shown_once() -> None:
    line = _plain(VERDICTS[1])
    assert line.count("Violent") == 1
    assert "token 7 seq 7 char 26 140 ms" in line


def test_help_explains_the_trailing_fields() -> None:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["watch"]  # type: ignore[union-attr]
    text = sub.format_help()
    for field in ("token N", "seq N char N", "cleared through seq N", "N ms", "latency"):
        assert field in text
