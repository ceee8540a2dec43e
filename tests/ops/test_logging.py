"""Structured logs: configuring them touches only the project's own handler and formatter."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from pipeline.logging import JsonFormatter, configure_logging


def test_configuring_logs_leaves_other_formatters_on_their_own_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.Formatter, "converter", time.localtime)   # restored after the test
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        configure_logging("INFO", io.StringIO())
        assert logging.Formatter.converter is time.localtime
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
        record.created = 86_400.5
        ours = [h for h in root.handlers if getattr(h, "_guardstream", False)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
        assert ours[0].formatter.formatTime(record, "%Y-%m-%d %H:%M:%S") == "1970-01-02 00:00:00"
        assert json.loads(ours[0].formatter.format(record))["msg"] == "hello"
    finally:
        for handler in [h for h in root.handlers if h not in before[0]]:
            root.removeHandler(handler)
        root.setLevel(before[1])
