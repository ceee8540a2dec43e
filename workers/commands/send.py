"""``guardstream send``: publish a conversations file as TokenDeltas, the way LLM frontends stream."""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.chunking import CHUNK_MODES
from pipeline.config import Settings, add_settings_arguments, settings_from_args
from pipeline.deltas import INTERLEAVE_MODES
from pipeline.errors import UserError

KAFKA_SETTINGS = [
    "kafka_bootstrap", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
    "kafka_sasl_password", "kafka_ssl_ca_location", "kafka_ssl_certificate_location", "kafka_ssl_key_location",
    "kafka_extra",
]

EPILOG = """\
Each message is cut into chunks (--chunk tokens: Qwen3 tokens, as an LLM streams them; chars:
characters; random: random 1..SIZE characters, which cuts through tokens). Every chunk becomes
one TokenDelta keyed by conversation_id, stamped with ts_ms at send time; a conversation closes
with a 'type: end' delta unless --no-end. Conversations are interleaved as concurrent chats
would be; each conversation's own order is always kept.

examples:
  guardstream send --input convs.jsonl
  guardstream send --input convs.jsonl --chunk chars --chunk-size 8 --rate 200
  guardstream send --input convs.jsonl --chunk random --chunk-size 5 --seed 7 --interleave random
  guardstream send --input convs.jsonl --id-suffix="-$(date +%s)"   # fresh conversation ids per run
"""


@dataclass
class SendReport:
    conversations: int = 0
    messages: int = 0
    deltas: int = 0
    bytes: int = 0
    delivered: int = 0
    failures: list[str] = field(default_factory=list)
    partitions: set[int] = field(default_factory=set)


def register(sub: Any) -> None:
    p = sub.add_parser("send", help="publish a conversations file as TokenDeltas",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, metavar="FILE", help="conversations JSONL file")
    p.add_argument("--chunk", choices=CHUNK_MODES, default="tokens", help="how to cut messages (default: tokens)")
    p.add_argument("--chunk-size", type=int, default=1, metavar="N",
                   help="tokens or characters per delta; with random sizes the largest (default: 1)")
    p.add_argument("--seed", type=int, default=None,
                   help="draw each chunk's size from 1..N, reproducibly (mode random always does; default seed 0)")
    p.add_argument("--rate", type=float, default=0.0, metavar="DELTAS_PER_S",
                   help="most deltas per second (default 0: as fast as possible)")
    p.add_argument("--interleave", choices=INTERLEAVE_MODES, default="round-robin",
                   help="how conversations mix (default: round-robin)")
    p.add_argument("--no-end", action="store_true", help="do not close conversations with a 'type: end' delta")
    p.add_argument("--id-suffix", default="", help="append this to every conversation_id")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")
    add_settings_arguments(p, [*KAFKA_SETTINGS, "topic_in"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from rich.console import Console

    from pipeline.chunking import Chunker
    from pipeline.conversations import read_conversations
    from pipeline.deltas import conversation_deltas, interleave

    if args.rate < 0:
        raise UserError("--rate must be 0 (unlimited) or a positive number of deltas per second")
    settings = settings_from_args(args)
    conversations = read_conversations(args.input)
    if args.id_suffix:
        conversations = [dataclasses.replace(c, conversation_id=c.conversation_id + args.id_suffix)
                         for c in conversations]
    chunker = Chunker(mode=args.chunk, size=args.chunk_size, seed=args.seed)
    streams = [conversation_deltas(c, chunker, end=not args.no_end) for c in conversations]
    order = list(interleave(streams, args.interleave, random.Random(args.seed or 0)))
    report = SendReport(conversations=len(conversations), messages=sum(len(c.messages) for c in conversations))
    console = Console(stderr=True)
    started = time.monotonic()
    _publish(settings, order, args.rate, report, show_progress=not args.no_progress, console=console)
    elapsed = time.monotonic() - started
    console.print(
        f"sent {report.deltas} deltas ({report.bytes} bytes) of {report.messages} messages in "
        f"{report.conversations} conversations to {settings.topic_in} in {elapsed:.2f} s "
        f"({report.deltas / max(elapsed, 1e-9):.0f} deltas/s); delivered {report.delivered}, "
        f"partitions used {sorted(report.partitions)}"
    )
    if report.failures:
        console.print(f"[red]{len(report.failures)} deltas were not delivered[/red], first: {report.failures[0]}")
        return 1
    return 0


def _publish(
    settings: Settings, deltas: list[Any], rate: float, report: SendReport, *, show_progress: bool, console: Any
) -> None:
    import msgspec
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.kafka import make_producer
    from schemas.messages import encode

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            report.failures.append(str(err))
        else:
            report.delivered += 1
            report.partitions.add(msg.partition())

    producer = make_producer(settings)
    progress = Progress(TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, disable=not show_progress)
    started = time.monotonic()
    with progress:
        task = progress.add_task("send", total=len(deltas))
        for i, delta in enumerate(deltas):
            if rate > 0:
                # Pace against the start, not the previous send, so sleeps' overshoot never accumulates.
                wait = started + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            value = encode(msgspec.structs.replace(delta, ts_ms=int(time.time() * 1000)))
            while True:
                try:
                    producer.produce(settings.topic_in, key=delta.conversation_id, value=value, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)  # local queue full: let deliveries drain
            producer.poll(0)
            report.deltas += 1
            report.bytes += len(value)
            progress.advance(task)
        remaining = producer.flush(60)
    if remaining:
        report.failures.append(f"{remaining} deltas still queued after 60 s (is Kafka reachable at "
                               f"{settings.kafka_bootstrap}?)")
