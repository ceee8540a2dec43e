"""``guardstream demo``: everything end to end on the local stack, on a model that works offline."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.config import add_settings_arguments, settings_from_args

_SETTINGS = ("state_dir", "kafka_port", "kafka_controller_port", "redis_port", "topic_in", "topic_verdicts",
             "topic_dlq", "partitions", "stream_group", "default_policy", "policy_file", "log_level")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="start the local stack, a model and a stream worker, and watch conversations being moderated",
        description="Starts Kafka + Redis on loopback, prepares a model (Qwen/Qwen3Guard-Stream-0.6B when the "
                    "Hugging Face hub is reachable, else a random UNTRAINED tiny one), starts a stream worker and "
                    "plays an LLM frontend through the client library, token by token.",
    )
    p.add_argument("--keep-stack", action="store_true", help="leave Kafka and Redis running afterwards")
    p.add_argument("--conversations", type=int, default=9, metavar="N", help="how many sample conversations")
    p.add_argument("--token-delay-ms", type=int, default=30, metavar="MS", help="pause between streamed tokens")
    add_settings_arguments(p, _SETTINGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import UserError
    from workers.demo.app import run_demo

    if args.conversations < 1:
        raise UserError("--conversations must be at least 1")
    return run_demo(settings_from_args(args), keep_stack=args.keep_stack, conversations=args.conversations,
                    token_delay_ms=max(0, args.token_delay_ms))
