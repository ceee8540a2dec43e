"""``guardstream watch``: follow guard.verdicts, one readable line per verdict, coloured by risk."""

from __future__ import annotations

import argparse
import logging
import time
from datetime import UTC, datetime
from typing import Any

from pipeline.config import add_settings_arguments, settings_from_args, settings_in_group
from schemas.messages import Verdict

KAFKA_SETTINGS = settings_in_group("kafka")
RISK_STYLE = {"safe": "green", "controversial": "yellow", "unsafe": "red"}

EPILOG = """\
Starts at the end of the topic (only new verdicts) unless --from-beginning. One line per verdict,
in fixed-width columns:

  TIME         CONVERSATION     MESSAGE          SOURCE     KIND     RISK          ACTION  ...
  12:04:31.512 chat-a           #1    assistant  stream     FLAG     UNSAFE        block Violent
      token 7 seq 7 char 26 140 ms     (on the same line)

TIME is the verdict's ts_ms (UTC); MESSAGE the message index and role; KIND final, flag or
progress (dim); RISK green safe, yellow controversial, red unsafe; CATEGORIES the categories
found (none when safe). Then, where the verdict has them:
  refusal / no refusal   assistant messages: whether the answer refuses (generative worker)
  token N                the deciding token: its index among the message's scored tokens
  seq N char N           where that token starts: the delta (seq) and character offset in the
                         message's text, so a client knows which text to retract
  cleared through seq N  progress verdicts: every delta up to seq N is judged safe to show
  N ms                   latency: from the delta's ts_ms (when it was sent) to the verdict
Ctrl-C stops. With --max the exit status is 1 if fewer verdicts came before --timeout.

examples:
  guardstream watch
  guardstream watch --from-beginning --conversation c42
  guardstream watch --from-beginning --max 10 --timeout 30 --json    # for scripts
"""


def register(sub: Any) -> None:
    p = sub.add_parser("watch", help="follow verdicts, human-readable", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from-beginning", action="store_true", help="show the verdicts already in the topic too")
    p.add_argument("--conversation", action="append", default=[], metavar="ID",
                   help="only this conversation (repeatable)")
    p.add_argument("--hide-progress", action="store_true", help="hide 'progress' watermark verdicts")
    p.add_argument("--max", type=int, default=None, metavar="N", help="stop after N verdicts shown")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="print each verdict as its JSON, one per line")
    p.add_argument("--no-color", action="store_true", help="plain text even on a terminal")
    add_settings_arguments(p, [*KAFKA_SETTINGS, "topic_verdicts"])
    p.set_defaults(func=run)


# Column widths of the fixed part of a line (plain text; markup is added after padding).
CONVERSATION_WIDTH = 16
KIND_LABELS = {"flag": "FLAG", "final": "final", "progress": "progress"}


def format_verdict(v: Verdict) -> str:
    """One line of rich markup for a verdict, its fixed columns padded so that lines align."""
    when = datetime.fromtimestamp(v.ts_ms / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
    style = RISK_STYLE.get(v.risk, "white")
    kind_text = KIND_LABELS.get(v.kind, v.kind)
    kind = {"flag": "[bold reverse]{}[/]", "progress": "[dim]{}[/]"}.get(v.kind, "{}").format(kind_text)
    kind += " " * (8 - len(kind_text))
    action = "[bold red]block[/]" if v.action == "block" else "allow"
    parts = [
        f"[dim]{when}[/]", f"[cyan]{_escape(v.conversation_id.ljust(CONVERSATION_WIDTH))}[/]",
        f"{'#' + str(v.message_index):<5} {v.role:10}", f"{v.source:10}", kind,
        f"[{style} bold]{v.risk.upper():13}[/]", action + " " * (5 - len(v.action)),
    ]
    # One list of categories: the stream worker also sets `category` (the first of them).
    categories = v.categories or ([v.category] if v.category else [])
    if categories:
        parts.append(f"[{style}]{_escape(', '.join(categories))}[/]")
    if v.refusal is not None:
        parts.append("refusal" if v.refusal else "no refusal")
    if v.token_index is not None:
        parts.append(f"token {v.token_index}")
    if v.seq is not None:
        parts.append(f"seq {v.seq}")
    if v.char_offset is not None:
        parts.append(f"char {v.char_offset}")
    if v.kind == "progress" and v.cleared_through_seq is not None:
        parts.append(f"cleared through seq {v.cleared_through_seq}")
    if v.latency_ms is not None:
        parts.append(f"[dim]{v.latency_ms} ms[/]")
    line = " ".join(parts)
    return f"[dim]{line}[/]" if v.kind == "progress" and v.risk == "safe" else line


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.kafka.clients import RateLimitedLog, require_kafka
    from pipeline.kafka.readers import verdict_reader
    from schemas.messages import decode_verdict

    settings = settings_from_args(args)
    console = Console(no_color=args.no_color, highlight=False, soft_wrap=True)
    wanted = set(args.conversation)
    require_kafka(settings)
    consumer = verdict_reader(settings, "watch", from_beginning=args.from_beginning)
    shown = 0
    # A broker that goes away mid-watch reports the same error on every poll: show it now and then.
    errors = RateLimitedLog(logging.getLogger("guardstream.watch"))
    deadline = time.monotonic() + args.timeout if args.timeout is not None else None
    try:
        while (args.max is None or shown < args.max) and (deadline is None or time.monotonic() < deadline):
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                held = errors.admit(str(msg.error()))
                if held is not None:
                    console.print(f"[red]kafka error:[/] {_escape(str(msg.error()))}"
                                  + (f" [dim]({held} more like it not shown)[/]" if held else ""))
                continue
            raw = msg.value() or b""
            try:
                verdict = decode_verdict(raw)
            except Exception as exc:
                console.print(f"[red]undecodable verdict at {msg.partition()}:{msg.offset()}:[/] {exc}")
                continue
            if wanted and verdict.conversation_id not in wanted:
                continue
            if args.hide_progress and verdict.kind == "progress":
                continue
            if args.json:
                console.out(raw.decode("utf-8", "replace"), highlight=False)
            else:
                console.print(format_verdict(verdict))
            shown += 1
    finally:
        consumer.close()
    return 1 if args.max is not None and shown < args.max else 0
