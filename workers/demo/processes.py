"""The demo's own processes (stream worker, scripted upstream, gateway): started in their own
session, recorded in the state dir so that ``guardstream demo --stop`` (or the next demo) can stop
what a ``--keep-stack`` run left running, and waited for until they answer."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.config import Settings, settings_environment
from pipeline.errors import UserError

RECORD = "demo-processes.json"


@dataclass(frozen=True)
class DemoProcess:
    name: str          # worker, upstream, gateway
    pid: int
    url: str           # where it answers
    log: str


def settings_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings_environment(settings)}


def start(name: str, argv: list[str], env: dict[str, str], url: str, log_path: Path
          ) -> tuple[DemoProcess, subprocess.Popen[bytes]]:
    # Its own session: Ctrl-C in the terminal reaches the demo, which stops these itself (or, with
    # --keep-stack, leaves them running on purpose).
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return DemoProcess(name, proc.pid, url, str(log_path)), proc


def wait_answering(proc: subprocess.Popen[bytes], name: str, url: str, log_path: Path,
                   timeout_s: float = 300.0) -> None:
    """Until ``url`` answers HTTP 200; a process that exits first is an error naming its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"the demo's {name} exited with code {proc.returncode}; see its log {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise UserError(f"the demo's {name} did not answer at {url} within {timeout_s:.0f}s; see its log {log_path}")


def record(state_dir: Path, processes: list[DemoProcess]) -> None:
    (state_dir / RECORD).write_text(json.dumps([asdict(p) for p in processes], indent=2))


def recorded(state_dir: Path) -> list[DemoProcess]:
    path = state_dir / RECORD
    try:
        data = json.loads(path.read_text())
        return [DemoProcess(**item) for item in data]
    except (OSError, ValueError, TypeError):
        return []


def _is_ours(pid: int) -> bool:
    """The pid still runs a Python process of ours (a recycled pid is left alone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part in (b"workers.stream", b"workers.cli", b"workers.demo.upstream") for part in cmdline)


def stop_pid(pid: int, timeout_s: float = 30.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout_s``; False when it was not running."""
    if not _is_ours(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def _running(pid: int) -> bool:
    """Alive and not a zombie (a child of ours is reaped here)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop_recorded(state_dir: Path) -> list[DemoProcess]:
    """Stop the processes a kept demo left (gateway first, so no request finds its worker gone)."""
    processes = recorded(state_dir)
    stopped = [p for p in sorted(processes, key=lambda p: ("gateway", "upstream", "worker").index(p.name)
                                 if p.name in ("gateway", "upstream", "worker") else 3) if stop_pid(p.pid)]
    (state_dir / RECORD).unlink(missing_ok=True)
    return stopped
