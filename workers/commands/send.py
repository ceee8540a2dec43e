"""``guardstream send``: publish a conversations file as TokenDeltas, the way LLM frontends stream."""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.chunking import CHUNK_MODES
from pipeline.clock import now_ms
from pipeline.config import Settings, add_settings_arguments, settings_from_args, settings_in_group
from pipeline.deltas import INTERLEAVE_MODES
from pipeline.errors import UserError

KAFKA_SETTINGS = settings_in_group("kafka")
# A broker that goes away mid-send: each delta fails after this long instead of librdkafka's 5 min.
DELIVERY_TIMEOUT_MS = 30_000

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
    from pipeline.kafka.clients import require_kafka

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
    require_kafka(settings)
    started = time.monotonic()
    _publish(settings, order, args.rate, report, show_progress=not args.no_progress, console=console)
    elapsed = time.monotonic() - started
    console.print(summary(report, settings.topic_in, elapsed), highlight=False)
    if report.delivered < report.deltas:
        hint = report.failures[0] if report.failures else "no delivery report"
        raise UserError(f"{report.deltas - report.delivered} of {report.deltas} deltas were not delivered to "
                        f"{settings.topic_in} at {settings.kafka_bootstrap} (first error: {hint}); "
                        "is Kafka running ('guardstream up') and does the topic exist ('guardstream topics')?")
    return 0


def summary(report: SendReport, topic: str, elapsed: float) -> str:
    """One line; counts only what the broker confirmed, so it never contradicts the error that may follow."""
    return (
        f"delivered {report.delivered} of {report.deltas} deltas ({report.bytes} bytes) of {report.messages} "
        f"messages in {report.conversations} conversations to {topic} in {elapsed:.2f} s "
        f"({report.delivered / max(elapsed, 1e-9):.0f} deltas/s), partitions used {sorted(report.partitions)}"
    )


def _publish(
    settings: Settings, deltas: list[Any], rate: float, report: SendReport, *, show_progress: bool, console: Any
) -> None:
    import msgspec
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.kafka import make_producer
    from schemas.messages import encode

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            if not report.failures:   # the first says why; thousands of copies say nothing more
                report.failures.append(str(err))
        else:
            report.delivered += 1
            report.partitions.add(msg.partition())

    producer = make_producer(settings, **{"message.timeout.ms": str(DELIVERY_TIMEOUT_MS)})
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
            value = encode(msgspec.structs.replace(delta, ts_ms=now_ms()))
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
        # Every queued delta gets a delivery report (success or timeout) within DELIVERY_TIMEOUT_MS.
        producer.flush(DELIVERY_TIMEOUT_MS / 1000 + 10)
