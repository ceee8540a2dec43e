"""Real HTTP servers for the gateway tests: the project's scripted OpenAI-compatible upstream
(pipeline.gateway.scripted) and the gateway, each served by uvicorn in a thread on a free loopback port."""

from __future__ import annotations

from typing import Any

from pipeline.config import Settings
from pipeline.gateway.app import create_app
from pipeline.gateway.scripted import ScriptedUpstream, ServerThread, UpstreamCall, free_port

__all__ = ["ScriptedUpstream", "ServerThread", "UpstreamCall", "free_port", "start_gateway"]


def start_gateway(settings: Settings, upstream_url: str, **changes: Any) -> ServerThread:
    return ServerThread(create_app(settings.replace(upstream=f"{upstream_url}/v1", **changes))).start()
