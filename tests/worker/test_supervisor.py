"""``guardstream worker stream --restart``: restarts on exit 75, passes other codes, forwards SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.worker.harness import REPO

CHILD = """
import pathlib, signal, sys, time
runs = pathlib.Path(sys.argv[1])
n = int(runs.read_text() or 0) if runs.exists() else 0
runs.write_text(str(n + 1))
if n < int(sys.argv[2]):
    sys.exit(75)
if sys.argv[3] == "wait":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    pathlib.Path(sys.argv[1] + ".ready").write_text("1")
    time.sleep(60)
    sys.exit(9)
sys.exit(int(sys.argv[3]))
"""


def _supervisor(tmp_path: Path, fails: int, then: str) -> subprocess.Popen[bytes]:
    child = [sys.executable, "-c", CHILD, str(tmp_path / "runs"), str(fails), then]
    code = ("import sys; from workers.stream.supervisor import supervise; "
            f"sys.exit(supervise({child!r}, first_backoff_s=0.05))")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO)


def test_a_worker_exiting_75_is_restarted_and_another_code_is_returned(tmp_path: Path) -> None:
    proc = _supervisor(tmp_path, fails=3, then="4")
    assert proc.wait(60) == 4
    assert (tmp_path / "runs").read_text() == "4"      # three exits 75, then the one that returned 4


def test_sigterm_reaches_the_worker_and_ends_the_supervisor(tmp_path: Path) -> None:
    proc = _supervisor(tmp_path, fails=1, then="wait")
    deadline = time.monotonic() + 60
    while not (tmp_path / "runs.ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0                           # the child's own exit code, no restart
    assert (tmp_path / "runs").read_text() == "2"
