"""``guardstream smoke``: after a deploy, send a canary conversation and check its verdicts arrive in time."""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from pipeline.clock import now_ms
from pipeline.config import add_settings_arguments, settings_from_args, settings_in_group
from pipeline.errors import UserError

KAFKA_SETTINGS = settings_in_group("kafka")
CANARY_MESSAGES = (("user", "Smoke test: what is the capital of France?"),
                   ("assistant", "The capital of France is Paris."))

EPILOG = """\
Publishes one short canary conversation (a user question and an assistant answer, id
guardstream-smoke-<random>, tenant 'guardstream-smoke') to guard.in, then reads guard.verdicts
until every message has its final verdict from the stream worker (and, with --generative, from the
generative worker too). Exit 0 when they all arrived within --timeout seconds, 1 otherwise (naming
what is missing), 2 when Kafka cannot be reached. The canary's verdicts are real verdicts on
guard.verdicts: consumers can skip the 'guardstream-smoke' tenant.

examples:
  guardstream smoke
  guardstream smoke --timeout 120 --generative --kafka-bootstrap kafka:9092
"""


def register(sub: Any) -> None:
    p = sub.add_parser("smoke", help="post-deploy check: a canary conversation gets its verdicts in time",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long the verdicts may take (default 60)")
    p.add_argument("--generative", action="store_true", help="also wait for the generative worker's rulings")
    add_settings_arguments(p, [*KAFKA_SETTINGS, "topic_in", "topic_verdicts"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.chunking import Chunker
    from pipeline.conversations import Conversation, Message
    from pipeline.deltas import conversation_deltas
    from pipeline.kafka.clients import make_producer, require_kafka
    from pipeline.kafka.readers import verdict_reader
    from schemas.messages import decode_verdict, encode

    settings = settings_from_args(args)
    require_kafka(settings)
    conversation_id = f"guardstream-smoke-{uuid.uuid4().hex[:12]}"
    canary = Conversation(conversation_id, "guardstream-smoke",
                          tuple(Message(role, text) for role, text in CANARY_MESSAGES))  # type: ignore[arg-type]
    sources = ("stream", "generative") if args.generative else ("stream",)
    wanted = {(index, source) for index in range(len(CANARY_MESSAGES)) for source in sources}

    consumer = verdict_reader(settings, "smoke", also_require=(settings.topic_in,))
    try:
        producer = make_producer(settings)
        started = time.monotonic()
        for delta in conversation_deltas(canary, Chunker("chars", 8)):
            producer.produce(settings.topic_in, key=conversation_id,
                             value=encode(_stamped(delta)))
        if producer.flush(min(args.timeout, 30)):
            raise UserError(f"the canary could not be delivered to {settings.topic_in} at {settings.kafka_bootstrap}")
        seen: dict[tuple[int, str], int] = {}
        deadline = started + args.timeout
        while time.monotonic() < deadline and not wanted <= set(seen):
            msg = consumer.poll(0.2)
            value = msg.value() if msg is not None and msg.error() is None else None
            if not value:
                continue
            try:
                verdict = decode_verdict(value)
            except Exception:
                continue
            if verdict.conversation_id == conversation_id and verdict.kind == "final":
                seen.setdefault((verdict.message_index, verdict.source), int((time.monotonic() - started) * 1000))
    finally:
        consumer.close()
    missing = sorted(wanted - set(seen))
    for (index, source), ms in sorted(seen.items()):
        print(f"message {index} ({CANARY_MESSAGES[index][0]}): {source} final verdict after {ms} ms")
    if missing:
        names = ", ".join(f"message {i} from the {s} worker" for i, s in missing)
        print(f"smoke test FAILED: no final verdict within {args.timeout:g} s for {names} (conversation "
              f"{conversation_id}); are the workers running and consuming {settings.topic_in}?")
        return 1
    print(f"smoke test passed: conversation {conversation_id}, {len(seen)} final verdicts in time")
    return 0


def _stamped(delta: Any) -> Any:
    import msgspec

    return msgspec.structs.replace(delta, ts_ms=now_ms())
