"""A scripted OpenAI-compatible upstream: set replies streamed as Chat Completions SSE chunks.

What the demo, the gateway's tests and ``guardstream bench gateway`` put behind the gateway where no
LLM runs: ``POST /v1/chat/completions`` streams the reply scripted for the request's last user
message (or the default reply), one piece every ``delay_s``, then ``finish_reason: "stop"``, a usage
chunk and ``[DONE]``; ``stream: false`` gets the whole reply in one body. ``GET /v1/models`` lists
one model. Each call is recorded, including whether its client went away before the end (what a
gateway does to stop a blocked reply). Built on Starlette and sse-starlette, like the gateway.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline.ops.ports import free_port

MODEL_ID = "scripted"
DEFAULT_USAGE: Mapping[str, int] = {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}
# An LLM streams sub-word tokens: a piece is up to 4 non-space characters with the spaces before
# them, so scripts without spaces (Chinese) are cut too; the pieces join back to the text exactly.
_PIECE = re.compile(r"\s*\S{1,4}|\s+$")


def stream_pieces(text: str) -> list[str]:
    """``text`` cut into the pieces an LLM server might stream (``"".join`` gives ``text`` back)."""
    return _PIECE.findall(text)


@dataclass
class UpstreamCall:
    body: dict[str, Any]
    authorization: str | None
    sent_chunks: int = 0
    finished: bool = False        # every scripted chunk was sent
    disconnected: bool = False    # the client closed the connection before the end


@dataclass
class ScriptedUpstream:
    """An OpenAI-compatible server that streams scripted replies and records each call.

    ``replies`` maps a last user message to its reply pieces; any other request gets ``chunks``.
    A ``status`` other than 200 answers every completion with an OpenAI error body and that status.
    """

    chunks: Sequence[str] = ()
    delay_s: float = 0.02
    status: int = 200
    usage: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_USAGE))
    replies: Mapping[str, Sequence[str]] = field(default_factory=dict)
    calls: list[UpstreamCall] = field(default_factory=list)

    @classmethod
    def from_texts(cls, replies: Mapping[str, str], default: str = "", delay_s: float = 0.02) -> ScriptedUpstream:
        """Replies given as whole texts (prompt -> reply), streamed as :func:`stream_pieces`."""
        return cls(stream_pieces(default), delay_s,
                   replies={prompt: stream_pieces(reply) for prompt, reply in replies.items()})

    def reply_for(self, body: Mapping[str, Any]) -> Sequence[str]:
        messages = body.get("messages")
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"] \
            if isinstance(messages, list) else []
        last = users[-1] if users else None
        return self.replies.get(last, self.chunks) if isinstance(last, str) else self.chunks

    def app(self) -> Starlette:
        async def models(request: Request) -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0,
                                                             "owned_by": "guardstream"}]})

        async def completions(request: Request) -> EventSourceResponse | JSONResponse:
            try:
                body = await request.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                return _error(400, "the request body must be a JSON object")
            call = UpstreamCall(body, request.headers.get("authorization"))
            self.calls.append(call)
            if self.status != 200:
                return _error(self.status, "scripted failure")
            pieces = list(self.reply_for(body))
            if body.get("stream") is not True:
                call.sent_chunks = len(pieces)
                call.finished = True
                return JSONResponse(self._completion("".join(pieces)))
            return EventSourceResponse(self._events(call, pieces))

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", completions,
                                                                    methods=["POST"])])

    def _completion(self, text: str) -> dict[str, Any]:
        return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": 1, "model": MODEL_ID,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}], "usage": dict(self.usage)}

    async def _events(self, call: UpstreamCall, pieces: Sequence[str]) -> AsyncIterator[dict[str, str]]:
        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, str]:
            return _data({"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1,
                          "model": MODEL_ID, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        try:
            yield chunk({"role": "assistant", "content": ""}, None)
            for text in pieces:
                await asyncio.sleep(self.delay_s)
                yield chunk({"content": text}, None)
                call.sent_chunks += 1
            yield chunk({}, "stop")
            yield _data({"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1,
                         "model": MODEL_ID, "choices": [], "usage": dict(self.usage)})
            yield {"data": "[DONE]"}
            call.finished = True
        except asyncio.CancelledError:
            # sse-starlette cancels the generator when the client goes away.
            call.disconnected = True
            raise


def _data(payload: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(payload, ensure_ascii=False)}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "scripted", "code": None, "param": None}},
                        status_code=status)


class ServerThread:
    """uvicorn serving ``app`` on loopback (``port`` 0: a free one) in a background thread."""

    def __init__(self, app: Any, port: int = 0, host: str = "127.0.0.1") -> None:
        import uvicorn

        self.host = host
        self.port = port or free_port()
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", access_log=False,
                                lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout_s: float = 60.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
