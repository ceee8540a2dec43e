"""One long-lived thread that turns a hung Kafka call into a process exit.

librdkafka has been seen to block past the timeout it was given (confluentinc/librdkafka#5456). A
call made under ``watch`` that runs past ``hung_after_s`` ends the process with EXIT_KAFKA_HUNG:
nothing of the open transaction is visible, and the restarted worker's recovery picks up exactly at
the last committed batch (docs/guarantees.md). One thread serves every call: arming and disarming
is a lock and a notify, not a thread started and stopped per call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from workers.stream.faults import EXIT_DEPENDENCY

log = logging.getLogger("guardstream.stream")

EXIT_KAFKA_HUNG = EXIT_DEPENDENCY
HUNG_AFTER_S = 20.0  # well past the timeout every transactional call is given


def exit_hung(what: str) -> None:
    log.critical("a kafka call hung past its timeout; exiting so that a restart (and recovery) takes over",
                 extra={"call": what, "exit_code": EXIT_KAFKA_HUNG})
    logging.shutdown()
    os._exit(EXIT_KAFKA_HUNG)


class HangWatchdog:
    """Watches one call at a time (the worker's loop makes its Kafka calls one after another)."""

    def __init__(self, hung_after_s: float = HUNG_AFTER_S, on_hang: Callable[[str], None] = exit_hung) -> None:
        self.hung_after_s = hung_after_s
        self._on_hang = on_hang
        self._cond = threading.Condition()
        self._call: str | None = None
        self._deadline = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, what: str) -> Iterator[None]:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kafka-watchdog", daemon=True)
                self._thread.start()
            self._call, self._deadline = what, time.monotonic() + self.hung_after_s
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._call = None   # the thread goes back to waiting without being woken

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._call is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                hung, self._call = self._call, None
                self._on_hang(hung)
