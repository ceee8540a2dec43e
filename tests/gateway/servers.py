"""Real HTTP servers for the gateway tests: a scripted OpenAI-compatible upstream and the gateway,
each served by uvicorn in a thread on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline.config import Settings
from pipeline.gateway.app import create_app
from pipeline.ops.ports import free_port


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
                                lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout_s: float = 60.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@dataclass
class UpstreamCall:
    body: dict[str, Any]
    authorization: str | None
    sent_chunks: int = 0
    finished: bool = False        # every scripted chunk was sent
    disconnected: bool = False    # the gateway closed the connection before the end


@dataclass
class ScriptedUpstream:
    """An OpenAI-compatible server that streams ``chunks`` (one every ``delay_s``) and records each call."""

    chunks: list[str]
    delay_s: float = 0.02
    status: int = 200             # anything else: answer with an OpenAI error body and this status
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 7, "completion_tokens": 11,
                                                           "total_tokens": 18})
    calls: list[UpstreamCall] = field(default_factory=list)

    def app(self) -> Starlette:
        async def models(request: Request) -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": "scripted", "object": "model", "created": 0,
                                                             "owned_by": "tests"}]})

        async def completions(request: Request) -> EventSourceResponse | JSONResponse:
            call = UpstreamCall(await request.json(), request.headers.get("authorization"))
            self.calls.append(call)
            if self.status != 200:
                return JSONResponse({"error": {"message": "scripted failure", "type": "test", "code": None}},
                                    status_code=self.status)
            return EventSourceResponse(self._events(call))

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", completions,
                                                                    methods=["POST"])])

    async def _events(self, call: UpstreamCall) -> AsyncIterator[dict[str, str]]:
        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, str]:
            return {"data": json.dumps({"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1,
                                        "model": "scripted", "choices": [{"index": 0, "delta": delta,
                                                                          "finish_reason": finish}]})}

        try:
            yield chunk({"role": "assistant", "content": ""}, None)
            for text in self.chunks:
                await asyncio.sleep(self.delay_s)
                yield chunk({"content": text}, None)
                call.sent_chunks += 1
            yield chunk({}, "stop")
            yield {"data": json.dumps({"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1,
                                       "model": "scripted", "choices": [], "usage": self.usage})}
            yield {"data": "[DONE]"}
            call.finished = True
        except asyncio.CancelledError:
            # sse-starlette cancels the generator when the client goes away.
            call.disconnected = True
            raise


def start_gateway(settings: Settings, upstream_url: str, **changes: Any) -> ServerThread:
    return ServerThread(create_app(settings.replace(upstream=f"{upstream_url}/v1", **changes))).start()
