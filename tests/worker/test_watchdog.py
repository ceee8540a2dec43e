"""The hang watchdog: one long-lived thread for every Kafka call, and a call past its limit ends the process."""

from __future__ import annotations

import threading
import time

from workers.stream.watchdog import HangWatchdog


def test_calls_in_time_reuse_one_thread_and_never_fire() -> None:
    fired: list[str] = []
    watchdog = HangWatchdog(hung_after_s=0.5, on_hang=fired.append)
    before = threading.active_count()
    for i in range(200):
        with watchdog.watch(f"call {i}"):
            pass
    assert threading.active_count() == before + 1, "one watchdog thread for all calls, not one per call"
    time.sleep(0.7)
    assert fired == []
    watchdog.close()
    assert threading.active_count() == before


def test_a_call_past_the_limit_is_reported_by_name() -> None:
    fired: list[str] = []
    watchdog = HangWatchdog(hung_after_s=0.2, on_hang=fired.append)
    with watchdog.watch("quick"):
        pass
    with watchdog.watch("commit_transaction"):
        deadline = time.monotonic() + 5
        while not fired and time.monotonic() < deadline:
            time.sleep(0.02)
    assert fired == ["commit_transaction"]
    watchdog.close()


def test_a_new_call_gets_a_fresh_deadline() -> None:
    fired: list[str] = []
    watchdog = HangWatchdog(hung_after_s=0.3, on_hang=fired.append)
    for _ in range(5):   # 5 x 0.2 s: longer than the limit in all, each call well within it
        with watchdog.watch("send_offsets_to_transaction"):
            time.sleep(0.2)
    assert fired == []
    watchdog.close()
