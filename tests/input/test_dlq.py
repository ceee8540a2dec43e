"""DLQ records always fit the limit they are given, keep what identifies the original, and metric
labels come from a fixed set."""

from __future__ import annotations

import base64
import hashlib
import json

import msgspec
import pytest

from pipeline.dlq import LABELS, RECORD_OVERHEAD_BYTES, dlq_record, encode_fitting, reason_class
from schemas.messages import MAX_REASON_CHARS, DlqRecord


@pytest.mark.parametrize("raw", [
    b"a" * 600_000,
    "\u0001".encode() * 200_000,          # JSON escapes each as \\u0001: six bytes per byte
    "é😀".encode() * 100_000,
    b"\xff" * 300_000,                      # not UTF-8: base64 only
])
@pytest.mark.parametrize("limit", [1_000_000, 100_000, 5_000])
def test_a_record_of_any_original_fits_and_identifies_the_original(raw: bytes, limit: int) -> None:
    record = dlq_record("r" * 10_000, raw, "guard.in", 3, 17, "w", 0, key=b"k" * 50_000, conversation_id="c")
    data = encode_fitting(record, limit)
    assert len(data) <= limit - RECORD_OVERHEAD_BYTES
    fitted = msgspec.json.decode(data, type=DlqRecord)
    kept = base64.b64decode(fitted.original_b64)
    assert raw.startswith(kept)
    assert (fitted.original_length, fitted.original_sha256) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert (fitted.source_topic, fitted.source_partition, fitted.source_offset) == ("guard.in", 3, 17)
    assert fitted.original_truncated == (len(kept) < len(raw))
    assert len(fitted.reason) <= MAX_REASON_CHARS
    if fitted.original_text is not None and fitted.original_truncated:
        assert fitted.original_text.endswith(f"of {len(raw)} bytes]")


def test_a_small_record_is_left_whole() -> None:
    record = dlq_record("malformed JSON: x", b"{", "t", 0, 1, "w", 0)
    fitted = json.loads(encode_fitting(record, 1_000_000))
    assert fitted["original_text"] == "{" and not fitted.get("original_truncated")


def test_metric_labels_come_from_a_fixed_set() -> None:
    assert reason_class("malformed JSON: expected ',' or '}'") == "malformed json"
    assert reason_class("gap: message 1 seq 2 waited") == "gap"
    assert reason_class("gap at end: message 1 seq 2 was held") == "gap at end"
    assert reason_class("message 3 reaches the model context of 96 tokens: x") == "model context"
    assert reason_class("held deltas limit: 1000 deltas") == "held deltas limit"
    assert reason_class("Object contains unknown field `" + "x" * 10_000) == "other"
    assert {reason_class(f"{n} random reason {n}") for n in range(1000)} == {"other"}
    assert all(reason_class(label) in LABELS for label in LABELS)
    assert reason_class("assistant message 2 got no ruling: x") == "stranded message"
