"""Detached background processes tracked by PID files.

A PID file holds ``<pid> <start-time>``: the start time (from ``/proc/<pid>/stat``) tells our
process apart from an unrelated one that reused the PID after a reboot or crash, so ``down``
never signals a stranger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` in clock ticks, or None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19]


def _proc_state(pid: int) -> str | None:
    return _proc_state_path(Path(f"/proc/{pid}/stat"))


def _proc_state_path(stat_file: Path) -> str | None:
    try:
        stat = stat_file.read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count: it has exited and only awaits reaping)."""
    try:
        # Reap it if it is our own exited child, so it stops looking alive.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _proc_state(pid) not in ("Z", "X"):
        return True
    # A zombie leader may still have running threads: a JVM's main thread exits first and its
    # shutdown hooks go on in other threads, with the ports still bound. Alive until all are gone.
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(_proc_state_path(Path(f"/proc/{pid}/task/{tid}/stat")) not in (None, "Z", "X") for tid in tasks)


@dataclass(frozen=True)
class PidFile:
    path: Path

    def read(self) -> int | None:
        """The PID recorded here if that very process still runs, else None."""
        try:
            parts = self.path.read_text().split()
        except OSError:
            return None
        if not parts or not parts[0].isdigit():
            return None
        pid = int(parts[0])
        if not pid_alive(pid):
            return None
        recorded_start = parts[1] if len(parts) > 1 else None
        current_start = _proc_start_time(pid)
        if recorded_start and current_start and recorded_start != current_start:
            return None  # PID reused by another process
        return pid

    def write(self, pid: int) -> None:
        start = _proc_start_time(pid) or ""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{pid} {start}\n".rstrip() + "\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def start_detached(
    command: Sequence[str], log_file: Path, pid_file: PidFile, *, cwd: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start ``command`` in its own session (it outlives this process), output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    pid_file.write(proc.pid)
    return proc.pid


def stop_pid(pid: int, timeout_s: float, *, hard: bool = False) -> None:
    """SIGTERM (SIGKILL at once when ``hard``), then SIGKILL if still running after ``timeout_s``."""
    try:
        os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
    except ProcessLookupError:
        return
    if wait_exit(pid, timeout_s):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_exit(pid, 10.0)


def stop_recorded(pid_file: PidFile, timeout_s: float, *, hard: bool = False) -> bool:
    """Stop the process ``pid_file`` records (see :func:`stop_pid`); False when none was running."""
    pid = pid_file.read()
    if pid is None:
        pid_file.remove()
        return False
    stop_pid(pid, timeout_s, hard=hard)
    pid_file.remove()
    return True


def wait_until_answers(
    name: str, pid: int, pid_file: PidFile, log_file: Path, answers: Callable[[], bool], wait_s: float, poll_s: float
) -> bool:
    """Poll ``answers`` until it says yes (True) or ``wait_s`` passes (False).

    A process that exits meanwhile is a UserError carrying the end of its log: waiting on would
    only turn a clear startup failure into a vague timeout.
    """
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if pid_file.read() != pid:
            pid_file.remove()
            raise UserError(f"{name} exited during startup; last lines of {log_file}:\n{tail(log_file)}")
        if answers():
            return True
        time.sleep(poll_s)
    return False


def wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
