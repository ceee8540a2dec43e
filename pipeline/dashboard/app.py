"""The dashboard's ASGI app (Starlette): the page, its assets, JSON views and a server-sent event feed.

One :class:`Dashboard` owns the state, the Kafka feed and the connected browsers. It is served on its
own (``guardstream dashboard``, :func:`create_dashboard_app`) or mounted by the gateway at ``/ui``
(:func:`ui_routes`; the mounting app starts and closes it in its lifespan, since Starlette runs no
lifespan of a mounted app). Every URL the page uses is relative, so it works under any prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources

from prometheus_client import make_asgi_app
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from pipeline.config import Settings
from pipeline.dashboard.feed import Feed
from pipeline.dashboard.history import read_history
from pipeline.dashboard.metrics import DashboardMetrics
from pipeline.dashboard.state import RISK_ORDER, DashboardState, ViewLimits

log = logging.getLogger("guardstream.dashboard")

PREFIX = "/ui"
TICK_S = 0.5
# Updates queued per browser; a browser that falls this far behind is disconnected (its EventSource
# reconnects and starts again from a fresh snapshot), so a slow client never holds memory.
CLIENT_QUEUE = 32
MAX_CLIENTS = 64
HISTORY_SCANS = 2
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# The page loads only its own script and style and never evaluates strings: data is shown with
# textContent, and the policy makes any injected markup inert anyway.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
MAX_ID_CHARS = 256


def _asset(name: str) -> bytes:
    return resources.files("pipeline.dashboard").joinpath("static", name).read_bytes()


class Dashboard:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.state = DashboardState(ViewLimits(
            max_conversations=settings.dashboard_max_conversations, max_messages=settings.dashboard_max_messages,
            max_message_chars=settings.dashboard_max_message_chars, show_text=settings.dashboard_show_text,
        ), clock)
        self.lock = threading.Lock()
        self.metrics = DashboardMetrics()
        self.feed: Feed | None = None
        self.clients: set[asyncio.Queue[str | None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._history_slots = asyncio.Semaphore(HISTORY_SCANS)
        # Read once: the assets are served from memory (and a missing one fails at start, not per request).
        self._index = _asset("index.html")
        self._assets = {name: _asset(name) for name in _ASSETS}

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.feed = (await asyncio.to_thread(Feed, self.settings, self.state, self.lock, self.metrics)).start()
        self._ticker = asyncio.create_task(self._tick(), name="dashboard-ticker")

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for client in list(self.clients):
            _end(client)
        if self.feed is not None:
            await asyncio.to_thread(self.feed.close)
            self.feed = None
            log.info("dashboard stopped")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.broadcast(self.update())

    def update(self) -> str:
        """The next ``update`` event: changed conversations' summaries, removed ids, fresh stats."""
        with self.lock:
            changed, removed = self.state.drain_changes()
            summaries = [s for s in (self.state.summary(c) for c in changed) if s is not None]
            stats = self.state.stats()
            self.metrics.conversations.set(stats["conversations"])
            self.metrics.evicted.set(stats["evicted"])
        return json.dumps({"stats": stats, "conversations": summaries, "removed": removed})

    def broadcast(self, event: str) -> None:
        for client in list(self.clients):
            try:
                client.put_nowait(event)
            except asyncio.QueueFull:
                self.clients.discard(client)
                _end(client)
                self.metrics.clients_dropped.inc()
                log.warning("slow dashboard client disconnected", extra={"queued": client.qsize()})

    # --- routes -----------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        if not request.url.path.endswith("/"):
            # Relative asset URLs need the trailing slash (/ui -> /ui/).
            return RedirectResponse(request.url.path + "/", status_code=307)
        return Response(self._index, media_type="text/html; charset=utf-8", headers=_HEADERS)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self._assets:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(self._assets[name], media_type=_ASSETS[name], headers=_HEADERS)

    async def events(self, request: Request) -> Response:
        if len(self.clients) >= MAX_CLIENTS:
            self.metrics.clients_refused.inc()
            return JSONResponse({"error": f"more than {MAX_CLIENTS} live views connected; retry later"},
                                status_code=503)
        async def stream() -> AsyncIterator[dict[str, str]]:
            # Registered only once the stream runs: a client gone before that leaves nothing behind.
            queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=CLIENT_QUEUE)
            with self.lock:
                snapshot = json.dumps({"stats": self.state.stats(), "conversations": self.state.list_conversations()})
            self.clients.add(queue)
            self.metrics.clients.inc()
            try:
                yield {"event": "snapshot", "data": snapshot}
                while True:
                    item = await queue.get()
                    if item is None:
                        return
                    yield {"event": "update", "data": item}
            finally:
                self.clients.discard(queue)
                self.metrics.clients.dec()

        # send_timeout: a client whose socket stops taking data is dropped even before its queue fills.
        return EventSourceResponse(stream(), ping=15, send_timeout=10, headers={"Cache-Control": "no-cache"})

    async def conversations(self, request: Request) -> Response:
        tenant = request.query_params.get("tenant") or None
        risk = request.query_params.get("risk") or None
        if risk is not None and risk not in RISK_ORDER:
            return _bad(f"risk must be one of {', '.join(RISK_ORDER)}")
        try:
            limit = min(500, max(1, int(request.query_params.get("limit", "500"))))
        except ValueError:
            return _bad("limit must be an integer")
        with self.lock:
            listed = self.state.list_conversations(tenant, risk, limit)
        return JSONResponse({"conversations": listed})

    async def conversation(self, request: Request) -> Response:
        conversation_id = request.query_params.get("id", "")
        if not 0 < len(conversation_id) <= MAX_ID_CHARS:
            return _bad("id must be a conversation id (1-256 characters)")
        with self.lock:
            detail = self.state.detail(conversation_id)
        if detail is None:
            return JSONResponse({"error": "not in the live view (not seen yet, or dropped); see history"},
                                status_code=404)
        return JSONResponse(detail)

    async def history(self, request: Request) -> Response:
        conversation_id = request.query_params.get("id", "")
        if not 0 < len(conversation_id) <= MAX_ID_CHARS:
            return _bad("id must be a conversation id (1-256 characters)")
        if self._history_slots.locked():
            self.metrics.history_scans.labels("busy").inc()
            return JSONResponse({"error": "history replays are busy; retry shortly"}, status_code=429)
        async with self._history_slots:
            try:
                found = await asyncio.to_thread(read_history, self.settings, conversation_id)
            except Exception as exc:   # Kafka down or the topic gone: say so, the view goes on
                self.metrics.history_scans.labels("failed").inc()
                log.warning("history replay failed", extra={"error": type(exc).__name__})
                return JSONResponse({"error": f"could not read {self.settings.topic_verdicts}: {exc}"},
                                    status_code=503)
        self.metrics.history_scans.labels("complete" if found.complete else "partial").inc()
        return JSONResponse(found.json())

    async def stats(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse(self.state.stats())

    async def healthz(self, request: Request) -> Response:
        alive = self.feed is not None and self.feed.alive()
        return JSONResponse({"ok": alive}, status_code=200 if alive else 503)

    def app(self) -> Starlette:
        """The dashboard's routes as an app without lifespan (the owner starts and closes ``self``)."""
        return Starlette(routes=[
            Route("/", self.index),
            Route("/static/{name}", self.asset),
            Route("/events", self.events),
            Route("/api/conversations", self.conversations),
            Route("/api/conversation", self.conversation),
            Route("/api/history", self.history),
            Route("/api/stats", self.stats),
            Route("/healthz", self.healthz),
            Mount("/metrics", app=make_asgi_app(self.metrics.registry)),
        ])


def _end(client: asyncio.Queue[str | None]) -> None:
    """Make the client's stream end: clear what it has not read and queue the end."""
    while not client.empty():
        client.get_nowait()
    client.put_nowait(None)


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def ui_routes(dashboard: Dashboard) -> list[BaseRoute]:
    """``/ui`` (redirected to ``/ui/``) and everything under it."""
    async def to_slash(request: Request) -> Response:
        return RedirectResponse(PREFIX + "/", status_code=307)

    return [Route(PREFIX, to_slash), Mount(PREFIX, app=dashboard.app())]


def create_dashboard_app(settings: Settings) -> Starlette:
    """The standalone app: the view at ``/ui/`` (``/`` redirects there), as the gateway serves it."""
    dashboard = Dashboard(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await dashboard.start()
        try:
            yield
        finally:
            await dashboard.close()

    async def root(request: Request) -> Response:
        return RedirectResponse(PREFIX + "/", status_code=307)

    app = Starlette(routes=[Route("/", root), *ui_routes(dashboard)], lifespan=lifespan)
    app.state.dashboard = dashboard
    return app
