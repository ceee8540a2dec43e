"""``guardstream dashboard``: the live web view of what the guard is doing (docs/dashboard.md)."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.config import Settings, add_settings_arguments, settings_from_args, settings_in_group

_SETTINGS = ("dashboard_listen", "dashboard_show_text", "dashboard_start", "dashboard_max_conversations",
             "dashboard_max_messages", "dashboard_max_message_chars", "max_text_bytes", *settings_in_group("kafka"),
             "topic_in", "topic_verdicts", "log_level")

DESCRIPTION = """\
Serves a live web page of what the guard is doing: conversations as their verdicts stream in
(each message's tokens coloured by risk, flags and finals marked at their token, the
cleared-through watermark, the generative ruling beside the stream verdict), counts by tenant,
risk and category, verdict throughput and latency, and a conversation's full verdict history
replayed from guard.verdicts. Reads Kafka by itself (no consumer group of the workers', never
commits); the page, its script and style are served by the command itself (works offline).

Verdicts carry no text: by default tokens are shown as positions. --show-text also reads guard.in
and shows the text (mind who can reach the address). The page is at http://HOST:PORT/ui/."""

EPILOG = """\
examples:
  guardstream dashboard                                    # http://127.0.0.1:8090/ui/
  guardstream dashboard --listen 0.0.0.0:8090 --show-text  # text too, reachable from other hosts
  guardstream dashboard --dashboard-start earliest         # rebuild the view from what the topics retain
With --gateway-ui the gateway serves the same page at /ui on its own address.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("dashboard", help="live web view of conversations and verdicts",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(p, _SETTINGS)
    p.add_argument("--listen", dest="dashboard_listen", default=None, metavar="HOST:PORT",
                   help="alias of --dashboard-listen")
    p.add_argument("--show-text", dest="dashboard_show_text", default=None, action=argparse.BooleanOptionalAction,
                   help="alias of --dashboard-show-text")
    p.set_defaults(func=run)


def require_topics(settings: Settings) -> None:
    """One clear line when Kafka or a topic the view reads is missing, before the server starts."""
    from pipeline.errors import UserError
    from pipeline.kafka.clients import make_admin, require_kafka

    require_kafka(settings)
    existing = set(make_admin(settings).list_topics(timeout=10).topics)
    wanted = [settings.topic_verdicts] + ([settings.topic_in] if settings.dashboard_show_text else [])
    missing = [t for t in wanted if t not in existing]
    if missing:
        raise UserError(f"topic(s) {', '.join(missing)} do not exist at {settings.kafka_bootstrap}; create them with "
                        "'guardstream topics' (with the same --topic-in/--topic-verdicts)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.dashboard.app import create_dashboard_app
    from pipeline.logging import configure_logging
    from workers.commands.gateway import parse_listen

    settings = settings_from_args(args)
    host, port = parse_listen(settings.dashboard_listen, "--listen")
    require_topics(settings)
    configure_logging(settings.log_level)
    # uvicorn stops accepting on SIGTERM/Ctrl-C, ends the live feeds (their streams close) and the lifespan
    # closes the Kafka readers.
    uvicorn.run(create_dashboard_app(settings), host=host, port=port, access_log=False, log_config=None,
                timeout_graceful_shutdown=5)
    return 0
