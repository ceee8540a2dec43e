"""The operations endpoint of every worker: /metrics (Prometheus), /healthz (alive), /readyz (ready).

A worker either flips the two flags (``set_alive``/``set_ready``) or hands in checks that answer
``(ok, reason)`` on each probe; the reason is the response body, so ``curl /healthz`` says why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"


class OpsServer:
    """Serves a private registry so that two workers in one process (tests) never share metrics."""

    def __init__(self, port: int, registry: CollectorRegistry, host: str = "0.0.0.0",
                 alive_check: Callable[[], tuple[bool, str]] | None = None,
                 ready_check: Callable[[], tuple[bool, str]] | None = None) -> None:
        self.registry = registry
        self._alive_check = alive_check
        self._ready_check = ready_check
        self._ready = threading.Event()
        self._alive = threading.Event()
        self._alive.set()
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == METRICS_PATH:
                    self._reply(200, generate_latest(server_self.registry), CONTENT_TYPE_LATEST)
                elif self.path == HEALTH_PATH:
                    ok, why = server_self.alive()
                    self._reply(200 if ok else 503, f"{why}\n".encode())
                elif self.path == READY_PATH:
                    ok, why = server_self.ready()
                    self._reply(200 if ok else 503, f"{why}\n".encode())
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def alive(self) -> tuple[bool, str]:
        if not self._alive.is_set():
            return False, "unhealthy"
        return self._alive_check() if self._alive_check is not None else (True, "ok")

    def ready(self) -> tuple[bool, str]:
        if not self._ready.is_set():
            return False, "not ready"
        return self._ready_check() if self._ready_check is not None else (True, "ready")

    def set_ready(self, ready: bool) -> None:
        (self._ready.set if ready else self._ready.clear)()

    def set_alive(self, alive: bool) -> None:
        (self._alive.set if alive else self._alive.clear)()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
