"""``guardstream worker stream --restart``: restart a worker that exits with code 75.

Outside Kubernetes (or systemd with ``Restart=``), nothing restarts a stream worker that exits
because a dependency kept failing (EXIT_DEPENDENCY) or a Kafka call hung. This supervisor runs
the worker as a child process, restarts it after such an exit with back-off, forwards SIGTERM
and SIGINT to it, and returns any other exit code as its own. See docs/deploy.md.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType

log = logging.getLogger("guardstream.supervisor")

RESTART_CODES = frozenset({75})
_FIRST_BACKOFF_S = 1.0
_MAX_BACKOFF_S = 30.0
_HEALTHY_RUN_S = 60.0  # a child that ran this long earns a fresh back-off


def supervise(command: Sequence[str], env: Mapping[str, str] | None = None,
              first_backoff_s: float = _FIRST_BACKOFF_S, max_backoff_s: float = _MAX_BACKOFF_S) -> int:
    """Run ``command`` until it exits with a code not in RESTART_CODES (or we are told to stop)."""
    stopping = threading.Event()
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    backoff = first_backoff_s
    try:
        while True:
            started = time.monotonic()
            child = subprocess.Popen(list(command), env=None if env is None else dict(env))
            code = _wait(child)
            if stopping.is_set() or code not in RESTART_CODES:
                return code
            if time.monotonic() - started > _HEALTHY_RUN_S:
                backoff = first_backoff_s
            log.warning("worker exited for a restart; restarting it", extra={
                "exit_code": code, "restart_in_s": backoff})
            if stopping.wait(backoff):
                return code
            backoff = min(backoff * 2, max_backoff_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait(child: subprocess.Popen[bytes]) -> int:
    while True:
        try:
            return child.wait()
        except InterruptedError:  # pragma: no cover - PEP 475 retries wait() for us
            continue
