"""The gateway's ASGI app (Starlette): ``POST /v1/chat/completions`` guarded, ``GET /v1/models`` passed through."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import httpx
from prometheus_client import make_asgi_app
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.client import GuardClient, ReleaseMode
from pipeline.config import Settings
from pipeline.dashboard.app import Dashboard, ui_routes
from pipeline.gateway import wire
from pipeline.gateway.completion import (
    BadRequest,
    Ended,
    GuardUnavailable,
    Limits,
    Released,
    guarded_reply,
    judge_prompt,
    message_texts,
)
from pipeline.gateway.metrics import GatewayMetrics
from pipeline.gateway.tenants import BadTenant, TenantResolver, Unauthorized, load_key_map
from pipeline.gateway.upstream import UpstreamError, forwarded_headers
from pipeline.policy import load_policy_book

log = logging.getLogger("guardstream.gateway")


class Gateway:
    """The shared parts of every request: one guard client, one upstream connection pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.upstream = settings.upstream.rstrip("/")
        keys = load_key_map(settings.gateway_api_keys) if settings.gateway_api_keys else None
        book = load_policy_book(settings.policy_file or None, settings.default_policy)
        self.tenants = TenantResolver(settings.gateway_tenant or None, settings.gateway_tenant_header, keys,
                                      frozenset(book.tenants) | frozenset((keys or {}).values()))
        self.fail_open = frozenset(t.strip() for t in settings.gateway_fail_open_tenants.split(",") if t.strip())
        self.mode: ReleaseMode = "optimistic" if settings.gateway_mode == "optimistic" else "guarded"
        self.limits = Limits(settings.gateway_verdict_timeout_ms / 1000, settings.gateway_max_reply_bytes)
        self.guard: GuardClient | None = None
        self.http: httpx.AsyncClient | None = None
        self.metrics = GatewayMetrics()

    async def start(self) -> None:
        timeout = httpx.Timeout(self.settings.gateway_upstream_timeout_ms / 1000)
        self.http = httpx.AsyncClient(timeout=timeout)
        self.guard = await GuardClient(self.settings, mode="guarded").start()

    async def close(self) -> None:
        if self.guard is not None:
            await self.guard.close()
        if self.http is not None:
            await self.http.aclose()

    # --- routes ---------------------------------------------------------------------------
    def _upstream_headers(self, request: Request) -> dict[str, str]:
        return forwarded_headers(request.headers, self.settings.gateway_upstream_api_key,
                                 self.tenants.keys is not None)

    async def models(self, request: Request) -> Response:
        assert self.http is not None
        try:
            self.tenants.resolve(request.headers)
        except Unauthorized as exc:
            return _error(401, str(exc), "invalid_api_key")
        except BadTenant:
            pass   # listing models needs no tenant
        try:
            answer = await self.http.get(f"{self.upstream}/models", headers=self._upstream_headers(request))
        except httpx.HTTPError as exc:
            return _error(502, f"the upstream could not be reached: {type(exc).__name__}", "upstream_error")
        return Response(answer.content, answer.status_code,
                        media_type=answer.headers.get("content-type", "application/json"))

    async def chat_completions(self, request: Request) -> Response:
        assert self.guard is not None and self.http is not None
        started = time.monotonic()
        try:
            tenant = self.tenants.resolve(request.headers)
        except Unauthorized as exc:
            self.metrics.requests.labels("unknown", "unauthorized").inc()
            return _error(401, str(exc), "invalid_api_key")
        except BadTenant as exc:
            return self._refuse(str(exc))
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._refuse("the request body is not JSON")
        if not isinstance(body, dict):
            return self._refuse("the request body must be a JSON object")
        try:
            messages = message_texts(body)
            if body.get("n", 1) != 1:
                raise BadRequest("only n=1 is supported through the guard")
        except BadRequest as exc:
            return self._refuse(str(exc))
        conversation_id = f"gw-{uuid.uuid4().hex}"
        stream = body.get("stream") is True
        model = str(body.get("model") or "")
        log.info("completion", extra={"conversation_id": conversation_id, "stream": stream,
                                      "messages": len(messages)})
        try:
            blocked = await judge_prompt(self.guard, conversation_id, tenant, messages, self.limits)
        except GuardUnavailable as exc:
            if tenant not in self.fail_open:
                self._end(conversation_id, tenant)
                self._failed_closed(conversation_id, stream, "prompt", tenant)
                return _error(503, f"{exc}; failing closed", "guard_unavailable")
            self._failed_open(conversation_id, "prompt", tenant)
            blocked = None
        self.metrics.prompt_seconds.observe(time.monotonic() - started)
        if blocked is not None:
            self._end(conversation_id, tenant)
            log.info("prompt blocked", extra={"conversation_id": conversation_id, "category": blocked.category,
                                              "risk": blocked.risk, "verdict_id": blocked.verdict_id})
            self.metrics.requests.labels(str(stream).lower(), "blocked_prompt").inc()
            self.metrics.blocks.labels("prompt", blocked.category or "", self.tenants.label(tenant)).inc()
            meta = wire.ReplyMeta.new(model)
            if stream:
                return EventSourceResponse(_blocked_prompt_events(meta, blocked))
            return JSONResponse(wire.completion(meta, "", "content_filter", None, blocked))
        # Optimistic release only makes sense while streaming: a whole response is sent at the end anyway.
        reply = guarded_reply(self.guard, self.http, f"{self.upstream}/chat/completions", body,
                              self._upstream_headers(request), conversation_id, tenant, self.limits,
                              self.mode if stream else "guarded", tenant in self.fail_open)
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return EventSourceResponse(self._stream(conversation_id, tenant, model, reply, include_usage,
                                                            started))
        return await self._whole(conversation_id, tenant, model, reply, started)

    async def _whole(self, conversation_id: str, tenant: str | None, model: str,
                     reply: AsyncGenerator[Released | Ended, None], started: float) -> Response:
        parts: list[str] = []
        try:
            async with aclosing(reply):   # the upstream request ends with this request, however it ends
                async for item in reply:
                    if isinstance(item, Released):
                        if not parts:
                            self.metrics.first_release_seconds.observe(time.monotonic() - started)
                        parts.append(item.text)
                        continue
                    self._ended(conversation_id, False, item, tenant)
                    return JSONResponse(wire.completion(_meta(item, model), "".join(parts), item.finish_reason,
                                                        item.upstream.usage, item.verdict or item.flagged))
        except UpstreamError as exc:
            self.metrics.requests.labels("false", "upstream_error").inc()
            return _error(exc.status, str(exc), "upstream_error")
        except GuardUnavailable as exc:
            self._failed_closed(conversation_id, False, "reply", tenant)
            return _error(503, f"{exc}; failing closed", "guard_unavailable")
        finally:
            self._end(conversation_id, tenant)
        return _error(502, "the reply ended without a verdict", "guard_unavailable")

    async def _stream(self, conversation_id: str, tenant: str | None, model: str,
                      reply: AsyncGenerator[Released | Ended, None], include_usage: bool, started: float
                      ) -> AsyncIterator[dict[str, str]]:
        meta = wire.ReplyMeta.new(model)
        first = True
        try:
            async with aclosing(reply):   # a client that goes away cancels the upstream request too
                async for item in reply:
                    if isinstance(item, Released):
                        if first:
                            self.metrics.first_release_seconds.observe(time.monotonic() - started)
                        yield _data(wire.chunk(meta, content=item.text, role=first))
                        first = False
                        continue
                    self._ended(conversation_id, True, item, tenant)
                    yield _data(wire.chunk(meta, role=first, finish_reason=item.finish_reason,
                                           verdict=item.verdict or item.flagged, retracted=item.retracted))
                    if include_usage and item.upstream.usage is not None:
                        yield _data(wire.usage_chunk(meta, item.upstream.usage))
                    yield {"data": "[DONE]"}
                    return
        except UpstreamError as exc:
            self.metrics.requests.labels("true", "upstream_error").inc()
            yield _data(wire.error(str(exc), "upstream_error", "upstream_error"))
        except GuardUnavailable as exc:
            self._failed_closed(conversation_id, True, "reply", tenant)
            yield _data(wire.error(f"{exc}; failing closed", "guard_unavailable", "guard_unavailable"))
        finally:
            self._end(conversation_id, tenant)

    def _end(self, conversation_id: str, tenant: str | None) -> None:
        assert self.guard is not None
        self.guard.end_soon(conversation_id, tenant=tenant)

    def _refuse(self, message: str) -> JSONResponse:
        self.metrics.requests.labels("unknown", "bad_request").inc()
        return _error(400, message, "invalid_request_error")

    def _failed_closed(self, conversation_id: str, stream: bool, stage: str, tenant: str | None) -> None:
        log.warning("failed closed", extra={"conversation_id": conversation_id, "stage": stage})
        self.metrics.requests.labels(str(stream).lower(), "failed_closed").inc()
        self.metrics.fail_closed.labels(stage, self.tenants.label(tenant)).inc()

    def _failed_open(self, conversation_id: str, stage: str, tenant: str | None) -> None:
        log.warning("failed open", extra={"conversation_id": conversation_id, "stage": stage})
        self.metrics.fail_open.labels(stage, self.tenants.label(tenant)).inc()

    def _ended(self, conversation_id: str, stream: bool, ended: Ended, tenant: str | None) -> None:
        extra: dict[str, Any] = {"conversation_id": conversation_id, "finish_reason": ended.finish_reason}
        if ended.verdict is not None:
            extra.update(category=ended.verdict.category, risk=ended.verdict.risk,
                         verdict_id=ended.verdict.verdict_id)
            self.metrics.blocks.labels("reply", ended.verdict.category or "", self.tenants.label(tenant)).inc()
        if ended.failed_open:
            self._failed_open(conversation_id, "reply", tenant)
        if ended.held_s is not None:
            self.metrics.final_hold_seconds.observe(ended.held_s)
        outcome = "blocked_reply" if ended.verdict is not None else "failed_open" if ended.failed_open else "released"
        self.metrics.requests.labels(str(stream).lower(), outcome).inc()
        log.info("reply ended", extra=extra)


def _meta(ended: Ended, model: str) -> wire.ReplyMeta:
    base = wire.ReplyMeta.new(model)
    return wire.ReplyMeta(ended.upstream.id or base.id, ended.upstream.model or model, base.created)


async def _blocked_prompt_events(meta: wire.ReplyMeta, verdict: Any) -> AsyncIterator[dict[str, str]]:
    yield _data(wire.chunk(meta, role=True, finish_reason="content_filter", verdict=verdict))
    yield {"data": "[DONE]"}


def _data(payload: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(payload, ensure_ascii=False)}


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(wire.error(message, code, code), status_code=status)


class InFlightLimit:
    """ASGI middleware: at most ``limit`` chat completions in flight (a streamed one counts until its
    last byte); more are refused with HTTP 429 at once, so memory and connections stay bounded."""

    def __init__(self, app: ASGIApp, limit: int, metrics: GatewayMetrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.metrics.requests.labels("unknown", "over_limit").inc()
            await _error(429, f"more than {self.limit} requests in flight; retry shortly",
                         "rate_limit_exceeded")(scope, receive, send)
            return
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)


def create_app(settings: Settings) -> Starlette:
    gateway = Gateway(settings)
    # The live view at /ui (docs/dashboard.md); Starlette runs no lifespan of a mounted app, so it is
    # started and closed here.
    dashboard = Dashboard(settings) if settings.gateway_ui else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            if dashboard is not None:
                await dashboard.start()
            yield
        finally:
            if dashboard is not None:
                await dashboard.close()
            await gateway.close()

    return Starlette(routes=[
        Route("/v1/chat/completions", gateway.chat_completions, methods=["POST"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Mount("/metrics", app=make_asgi_app(gateway.metrics.registry)),
        *(ui_routes(dashboard) if dashboard is not None else []),
    ], lifespan=lifespan, middleware=[
        Middleware(InFlightLimit, limit=max(1, settings.gateway_max_requests),
                   metrics=gateway.metrics),
    ])
