"""The wall clock in the unit of every ``ts_ms`` field: milliseconds since the Unix epoch."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
