"""The local Kafka's cluster id is always one the storage tool accepts."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import pytest

from pipeline.stack import kafka


def test_an_id_that_would_start_with_a_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xF8 as the first byte encodes to "-" first: the tool's argument parser reads that as an option.
    draws: Iterator[uuid.UUID] = iter([uuid.UUID(bytes=b"\xf8" + b"\x00" * 15), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(draws))
    assert kafka.new_cluster_id() == base64.urlsafe_b64encode(b"\x01" * 16).rstrip(b"=").decode()


def test_ids_are_16_random_bytes_in_url_safe_base64() -> None:
    ids = {kafka.new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    for cluster_id in ids:
        assert not cluster_id.startswith("-") and len(cluster_id) == 22
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
