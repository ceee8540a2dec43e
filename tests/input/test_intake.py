"""The edge function both workers call: the record key must be the conversation id; message limit."""

from __future__ import annotations

import pytest

from pipeline.intake import InputLimits, accept
from schemas.messages import MessageError, TokenDelta, encode

LIMITS = InputLimits(max_text_bytes=1000, max_conversation_messages=5)


def _value(cid: str = "c1", message_index: int = 0) -> bytes:
    return encode(TokenDelta(conversation_id=cid, message_index=message_index, role="user", seq=0, text="hi"))


def test_a_record_keyed_by_its_conversation_id_is_accepted() -> None:
    assert accept("c1-é".encode(), _value("c1-é"), LIMITS).conversation_id == "c1-é"


@pytest.mark.parametrize("key", [None, b"", b"c2", b"c1 ", b"C1", "c1".encode("utf-16-le"), b"x" * 100_000])
def test_a_key_that_is_not_the_conversation_id_byte_for_byte_is_a_key_mismatch(key: bytes | None) -> None:
    with pytest.raises(MessageError) as caught:
        accept(key, _value("c1"), LIMITS)
    assert str(caught.value).startswith("key mismatch")
    assert len(str(caught.value)) < 400


def test_message_index_past_the_per_conversation_limit_is_refused() -> None:
    assert accept(b"c1", _value(message_index=4), LIMITS).message_index == 4
    with pytest.raises(MessageError, match=r"^message limit: message_index 5 >= 5"):
        accept(b"c1", _value(message_index=5), LIMITS)


def test_an_undecodable_value_is_reported_as_such_not_as_a_key_mismatch() -> None:
    with pytest.raises(MessageError, match=r"^malformed JSON"):
        accept(b"other", b"{", LIMITS)
