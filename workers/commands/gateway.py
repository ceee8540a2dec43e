"""``guardstream gateway``: an OpenAI-compatible endpoint that guards any LLM server (docs/gateway.md)."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.config import Settings, add_settings_arguments, settings_from_args, settings_in_group

_SETTINGS = ("upstream", "listen", "gateway_mode", "gateway_tenant", "gateway_tenant_header", "gateway_api_keys",
             "gateway_upstream_api_key", "gateway_fail_open_tenants", "gateway_max_requests", "policy_file",
             "default_policy", "gateway_verdict_timeout_ms",
             "gateway_upstream_timeout_ms", "gateway_max_reply_bytes", *settings_in_group("kafka"), "topic_in",
             "topic_verdicts", "log_level", "gateway_ui", "dashboard_show_text", "dashboard_start",
             "dashboard_max_conversations", "dashboard_max_messages", "dashboard_max_message_chars")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "gateway", help="serve the OpenAI Chat Completions API in front of an LLM server, guarded",
        description="Serves POST /v1/chat/completions (streaming or not) and GET /v1/models in front of any "
                    "OpenAI-compatible upstream. Prompts are judged before they reach the upstream; replies "
                    "reach the client only once the stream workers have cleared them; a block stops the "
                    "upstream and ends the reply with finish_reason 'content_filter'. Needs Kafka and running "
                    "stream workers ('guardstream worker stream').",
    )
    add_settings_arguments(p, _SETTINGS)
    p.add_argument("--mode", dest="gateway_mode", choices=["guarded", "optimistic"], default=None,
                   help="alias of --gateway-mode")
    p.set_defaults(func=run)


def parse_listen(listen: str, flag: str = "--listen") -> tuple[str, int]:
    from pipeline.errors import UserError

    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{flag} {listen!r} is not HOST:PORT; write e.g. {flag} 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def require_topics(settings: Settings) -> None:
    """One clear line when Kafka or the gateway's topics are missing, before the server starts."""
    from pipeline.errors import UserError
    from pipeline.kafka.clients import make_admin, require_kafka

    require_kafka(settings)
    existing = set(make_admin(settings).list_topics(timeout=10).topics)
    missing = [t for t in (settings.topic_in, settings.topic_verdicts) if t not in existing]
    if missing:
        raise UserError(f"topic(s) {', '.join(missing)} do not exist at {settings.kafka_bootstrap}; create them with "
                        "'guardstream topics' (with the same --topic-in/--topic-verdicts) and start stream workers")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.errors import UserError
    from pipeline.gateway.app import create_app
    from pipeline.logging import configure_logging

    settings = settings_from_args(args)
    if not settings.upstream.startswith(("http://", "https://")):
        raise UserError("--upstream must be the upstream's base URL, e.g. --upstream http://127.0.0.1:8000/v1")
    host, port = parse_listen(settings.listen)
    require_topics(settings)
    configure_logging(settings.log_level)
    # uvicorn's access log would print request lines; the gateway logs its own structured lines.
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_config=None,
                timeout_graceful_shutdown=10)
    return 0
