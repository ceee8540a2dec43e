"""Ports of ops servers: starting one with a one-line hint when its port is taken, picking a free
port, asking a local worker whether it is ready."""

from __future__ import annotations

import errno
import socket
import urllib.error
import urllib.request
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from pipeline.errors import UserError
from pipeline.ops.server import OpsServer


def start_ops_server(port: int, registry: CollectorRegistry,
                     alive_check: Callable[[], tuple[bool, str]] | None = None,
                     ready_check: Callable[[], tuple[bool, str]] | None = None) -> OpsServer:
    """The started server; a port in use (a second worker on one host) is a UserError naming the flag."""
    try:
        return OpsServer(port, registry, alive_check=alive_check, ready_check=ready_check).start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise UserError(
            f"port {port} for /metrics, /healthz and /readyz is already in use (another worker on this host?); "
            "give this worker another --metrics-port (GUARD_METRICS_PORT), or 0 to turn the ops server off"
        ) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def readyz_status(port: int, timeout_s: float = 5.0) -> int:
    """The HTTP status of ``/readyz`` on a local ops server; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=timeout_s) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0
