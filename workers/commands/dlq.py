"""``guardstream dlq list|show|republish``: read dead-lettered input and re-publish fixed records."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import add_settings_arguments, settings_from_args, settings_in_group
from pipeline.errors import UserError

KAFKA_SETTINGS = settings_in_group("kafka")
REASON_WIDTH = 90

EPILOG = """\
Every record of guard.in.dlq is input a worker could not judge: the reason, where it came from
(source topic, partition, offset), the worker, and the original bytes. A record is named by its
place in the DLQ topic, PARTITION:OFFSET, as 'list' prints it.

examples:
  guardstream dlq list
  guardstream dlq show 0:17                       # reason, source offset, decoded original
  guardstream dlq show 0:17 --original-out bad.json   # the original bytes, to edit
  guardstream dlq republish 0:17 --file bad.json  # publish the fixed delta to guard.in, same key
  guardstream dlq republish 0:17                  # re-publish the original as it was (after a fix elsewhere)
"""


def register(sub: Any) -> None:
    p = sub.add_parser("dlq", help="list, inspect and re-publish dead-lettered input (guard.in.dlq)",
                       description="Read guard.in.dlq and re-publish fixed records to guard.in.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="one line per DLQ record: PARTITION:OFFSET, time, source, reason")
    listing.add_argument("--max", type=int, default=None, metavar="N", help="show at most N records")
    listing.add_argument("--json", action="store_true", help="each record as JSON, one per line")
    add_settings_arguments(listing, [*KAFKA_SETTINGS, "topic_dlq"])
    listing.set_defaults(func=run_list)
    show = actions.add_parser("show", help="one record in full, the original decoded")
    show.add_argument("ref", metavar="PARTITION:OFFSET", help="the record, as 'dlq list' names it")
    show.add_argument("--original-out", type=Path, metavar="FILE", help="also write the original bytes to FILE")
    add_settings_arguments(show, [*KAFKA_SETTINGS, "topic_dlq"])
    show.set_defaults(func=run_show)
    again = actions.add_parser("republish", help="publish a record's (fixed) original to guard.in")
    again.add_argument("ref", metavar="PARTITION:OFFSET", help="the DLQ record being fixed")
    again.add_argument("--file", type=Path, metavar="FILE",
                       help="the fixed TokenDelta (JSON) to publish instead of the original")
    again.add_argument("--key", default=None,
                       help="record key (default: the original's key, else the delta's conversation_id)")
    again.add_argument("--no-check", action="store_true",
                       help="publish even if the value is not a valid TokenDelta (it will land in the DLQ again)")
    add_settings_arguments(again, [*KAFKA_SETTINGS, "topic_dlq", "topic_in", "max_text_bytes"])
    again.set_defaults(func=run_republish)


def _when(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def run_list(args: argparse.Namespace) -> int:
    from pipeline.dlq_reader import read_dlq
    from pipeline.kafka.clients import require_kafka

    settings = settings_from_args(args)
    require_kafka(settings)
    shown = 0
    for entry in read_dlq(settings):
        if args.max is not None and shown >= args.max:
            break
        shown += 1
        if args.json:
            print(json.dumps(_as_dict(entry), ensure_ascii=False))
            continue
        rec = entry.record
        if rec is None:
            print(f"{entry.ref:>9}  {entry.error}")
            continue
        reason = rec.reason if len(rec.reason) <= REASON_WIDTH else rec.reason[:REASON_WIDTH - 3] + "..."
        source = f"{rec.source_topic}[{rec.source_partition}]@{rec.source_offset}"
        who = rec.conversation_id or rec.original_key or "-"
        print(f"{entry.ref:>9}  {_when(rec.ts_ms)}  {source:32}  {who:20}  {reason}")
    if not args.json:
        print(f"{shown} record(s) in {settings.topic_dlq}")
    return 0


def _as_dict(entry: Any) -> dict[str, Any]:
    import msgspec

    out: dict[str, Any] = {"dlq_partition": entry.partition, "dlq_offset": entry.offset}
    if entry.record is None:
        out["error"] = entry.error
        return out
    out.update(msgspec.to_builtins(entry.record))
    out.update(entry.extra)
    return out


def _one(settings: Any, ref: str) -> Any:
    from pipeline.dlq_reader import parse_ref, read_dlq

    wanted = parse_ref(ref)
    for entry in read_dlq(settings, only=wanted):
        if (entry.partition, entry.offset) == wanted:
            if entry.record is None:
                raise UserError(f"{ref} in {settings.topic_dlq}: {entry.error}")
            return entry
    raise UserError(f"no record at {ref} in {settings.topic_dlq} (see 'guardstream dlq list')")


def run_show(args: argparse.Namespace) -> int:
    from pipeline.kafka.clients import require_kafka

    settings = settings_from_args(args)
    require_kafka(settings)
    entry = _one(settings, args.ref)
    rec = entry.record
    original = entry.original()
    lines = [
        f"record        {settings.topic_dlq} {entry.ref}",
        f"reason        {rec.reason}",
        f"source        topic {rec.source_topic}, partition {rec.source_partition}, offset {rec.source_offset}",
        f"worker        {rec.worker} at {_when(rec.ts_ms)} UTC",
        f"conversation  {rec.conversation_id or '-'}",
        f"key           {rec.original_key if rec.original_key is not None else '(none)'}",
        f"original      {len(original)} bytes" + (
            f" (TRUNCATED: the original had {entry.original_length()} bytes)" if entry.truncated() else ""),
    ]
    if entry.field("original_sha256"):
        lines.append(f"sha256        {entry.field('original_sha256')} (of the whole original)")
    lines += [f"{name:13} {value}" for name, value in sorted(entry.extra.items())]
    print("\n".join(lines))
    print(_decoded(original))
    if args.original_out is not None:
        args.original_out.write_bytes(original)
        print(f"wrote the original ({len(original)} bytes) to {args.original_out}; edit it, then "
              f"'guardstream dlq republish {entry.ref} --file {args.original_out}'")
    return 0


def _decoded(original: bytes) -> str:
    """The original for humans: pretty JSON where it parses, else text, else a hex preview."""
    try:
        text = original.decode("utf-8")
    except UnicodeDecodeError:
        preview = original[:256].hex(" ")
        return f"(not UTF-8; first {min(len(original), 256)} bytes in hex)\n{preview}"
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def run_republish(args: argparse.Namespace) -> int:
    from pipeline.kafka.clients import make_producer, require_kafka
    from schemas.messages import MessageError, decode_delta

    settings = settings_from_args(args)
    require_kafka(settings)
    entry = _one(settings, args.ref)
    if args.file is not None:
        if not args.file.is_file():
            raise UserError(f"--file {args.file} does not exist")
        value = args.file.read_bytes()
    else:
        if entry.truncated():
            raise UserError(f"the DLQ kept only part of the original of {entry.ref}; write the fixed delta to a "
                            "file and pass --file FILE")
        value = entry.original()
    key = args.key
    delta = None
    try:
        delta = decode_delta(value.strip(), settings.max_text_bytes)
    except MessageError as exc:
        if not args.no_check:
            raise UserError(f"the value to publish is not a valid TokenDelta ({exc}); fix it (see "
                            f"'guardstream dlq show {entry.ref} --original-out FILE') or pass --no-check") from None
    if key is None:
        key = entry.record.original_key or (delta.conversation_id if delta is not None else None)
    if key is None:
        raise UserError("no key: the original had none and the value names no conversation; pass --key")
    failures: list[str] = []
    placed: list[int] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))
        else:
            placed.append(msg.partition())

    producer = make_producer(settings)
    producer.produce(settings.topic_in, key=key, value=value.strip(), on_delivery=on_delivery)
    producer.flush(30)
    if failures or not placed:
        raise UserError(f"publishing to {settings.topic_in} failed: {failures[0] if failures else 'no delivery'}")
    print(f"published {len(value.strip())} bytes with key {key!r} to {settings.topic_in} (partition {placed[0]}) "
          f"in place of DLQ record {entry.ref}")
    return 0
