"""Starting a worker's ops server with a one-line hint when its port is taken."""

from __future__ import annotations

import errno
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
