"""``guardstream demo``: everything end to end on the local stack, on a model that works offline."""

from __future__ import annotations

import argparse
import os
from typing import Any

from pipeline.config import add_settings_arguments, env_var, settings_from_args

_SETTINGS = ("state_dir", "kafka_port", "kafka_controller_port", "redis_port", "topic_in", "topic_verdicts",
             "topic_dlq", "partitions", "stream_group", "default_policy", "policy_file", "listen", "log_level")
# The demo shows all three outcomes: Safe replies released, Controversial ones released with their
# verdict (flagged), Unsafe ones stopped. Under the strict policy Controversial ones would be stopped too.
DEMO_DEFAULT_POLICY = "loose"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="start the local stack, a worker and the gateway, and send conversations through it",
        description="Starts Kafka + Redis on loopback, prepares a model (Qwen/Qwen3Guard-Stream-0.6B when the "
                    "Hugging Face hub is reachable, else a random UNTRAINED tiny one biased toward Safe), starts a "
                    "stream worker, a scripted OpenAI-compatible LLM and the gateway in front of it, then sends "
                    "the sample conversations through the gateway with the official openai client and shows what "
                    "the client received: released, flagged, or stopped (finish_reason content_filter and the "
                    f"guardstream verdict). The default policy is {DEMO_DEFAULT_POLICY} unless "
                    "--default-policy or GUARD_DEFAULT_POLICY says otherwise.",
    )
    p.add_argument("--keep-stack", action="store_true",
                   help="leave everything running afterwards (Kafka, Redis, worker, upstream, gateway and its "
                        "dashboard at /ui/); stop it with 'guardstream demo --stop' and 'guardstream down'")
    p.add_argument("--stop", action="store_true",
                   help="stop the worker, upstream and gateway that a '--keep-stack' run left, then exit")
    p.add_argument("--conversations", type=int, default=9, metavar="N", help="how many sample conversations")
    p.add_argument("--token-delay-ms", type=int, default=30, metavar="MS",
                   help="the scripted LLM's pause between streamed pieces")
    add_settings_arguments(p, _SETTINGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.config import state_path
    from pipeline.errors import UserError

    if args.default_policy is None and env_var("default_policy") not in os.environ:
        args.default_policy = DEMO_DEFAULT_POLICY
    settings = settings_from_args(args)
    if args.stop:
        from workers.demo.processes import stop_recorded

        stopped = stop_recorded(state_path(settings))
        print(f"stopped the demo's {', '.join(p.name for p in stopped)}" if stopped
              else "no demo processes were running")
        return 0
    if args.conversations < 1:
        raise UserError("--conversations must be at least 1")
    from workers.demo.app import run_demo

    return run_demo(settings, keep_stack=args.keep_stack, conversations=args.conversations,
                    token_delay_ms=max(0, args.token_delay_ms))
