"""The message contracts: code and JSON Schemas agree, messages round-trip, bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.generate import FILES, SCHEMA_DIR, render
from schemas.messages import (
    MAX_MESSAGE_INDEX,
    MAX_REASON_CHARS,
    MAX_SEQ,
    MAX_TENANT_CHARS,
    MAX_TS_MS,
    DlqRecord,
    MessageError,
    TokenDelta,
    Verdict,
    _check_keys_unique,
    decode_delta,
    decode_verdict,
    encode,
)

VALID_DELTA = {"conversation_id": "c1", "message_index": 0, "role": "user", "seq": 0, "text": "hi", "final": True}


def _schema(filename: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / filename).read_text(encoding="utf-8"))


def _raw(**changes: Any) -> bytes:
    body = {**VALID_DELTA, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not _DROP}).encode()


_DROP = object()
BAD_UTF8 = b'{"conversation_id": "c1", "text": "\xff"}'


@pytest.mark.parametrize("filename", sorted(FILES))
def test_committed_schema_files_equal_what_the_generator_renders(filename: str) -> None:
    committed = (SCHEMA_DIR / filename).read_text(encoding="utf-8")
    assert committed == render(FILES[filename], filename), "run: python -m schemas.generate"


def test_every_schema_file_is_a_valid_draft_2020_12_schema() -> None:
    for filename in FILES:
        jsonschema.Draft202012Validator.check_schema(_schema(filename))
    assert {p.name for p in Path(SCHEMA_DIR).glob("*.json")} == set(FILES)


def test_delta_round_trips_through_json() -> None:
    delta = TokenDelta(conversation_id="c", message_index=3, role="assistant", seq=9, text="é 😀", final=True,
                       reasoning=True, tenant="acme", ts_ms=1_700_000_000_000)
    assert decode_delta(encode(delta)) == delta


def test_end_delta_round_trips_without_message_fields() -> None:
    end = TokenDelta(conversation_id="c", type="end")
    assert json.loads(encode(end)) == {"conversation_id": "c", "type": "end"}
    assert decode_delta(encode(end)) == end


def test_verdict_and_dlq_record_round_trip() -> None:
    verdict = Verdict(verdict_id="c/1/stream/final/4", conversation_id="c", message_index=1, role="assistant",
                      source="stream", kind="final", risk="unsafe", action="block", model="m@r", ts_ms=5,
                      category="Violent", token_index=4, seq=2, char_offset=10, cleared_through_seq=1,
                      scores={"safe": 0.1, "unsafe": 0.8, "controversial": 0.1}, latency_ms=7)
    assert decode_verdict(encode(verdict)) == verdict
    record = DlqRecord(reason="r", source_topic="t", source_partition=0, source_offset=3, original_b64="AA==",
                       ts_ms=1, worker="w")
    assert msgspec.json.decode(encode(record), type=DlqRecord) == record


def test_encoded_messages_validate_against_their_json_schemas() -> None:
    samples: list[tuple[str, Any]] = [
        ("token-delta.schema.json", TokenDelta(conversation_id="c", message_index=0, role="user", seq=0)),
        ("token-delta.schema.json", TokenDelta(conversation_id="c", type="end")),
        ("verdict.schema.json", Verdict(verdict_id="v", conversation_id="c", message_index=0, role="user",
                                        source="generative", kind="final", risk="safe", action="allow",
                                        model="m", ts_ms=0, categories=[], refusal=False)),
        ("dlq-record.schema.json", DlqRecord(reason="r", source_topic="t", source_partition=0, source_offset=0,
                                             original_b64="", ts_ms=0, worker="w")),
    ]
    for filename, message in samples:
        jsonschema.validate(json.loads(encode(message)), _schema(filename))


@pytest.mark.parametrize("body", [
    {**VALID_DELTA, "role": "bot"},
    {**VALID_DELTA, "seq": -1},
    {**VALID_DELTA, "unknown": 1},
    {**VALID_DELTA, "conversation_id": ""},
    {**VALID_DELTA, "conversation_id": "x" * 257},
    {k: v for k, v in VALID_DELTA.items() if k != "seq"},
    {**VALID_DELTA, "reasoning": True},  # a user message cannot carry reasoning
    {**VALID_DELTA, "seq": 2**64},
    {**VALID_DELTA, "message_index": 2**63},
    {**VALID_DELTA, "message_index": MAX_MESSAGE_INDEX + 1},
    {**VALID_DELTA, "ts_ms": MAX_TS_MS + 1},
    {**VALID_DELTA, "seq": True},  # (1.0 is an integer to JSON Schema; the decoder refuses it, see below)
    {**VALID_DELTA, "tenant": ""},
    {**VALID_DELTA, "tenant": "t" * (MAX_TENANT_CHARS + 1)},
])
def test_schema_and_decoder_both_reject_the_same_invalid_delta(body: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, _schema("token-delta.schema.json"))
    with pytest.raises(MessageError):
        decode_delta(json.dumps(body).encode())


@pytest.mark.parametrize(("raw", "reason_part"), [
    (b"", "empty message"),
    (b'{"conversation_id": "c1", "message_index": 0,', "malformed JSON"),
    (b"[1, 2]", "Expected `object`"),
    (b"null", "Expected `object`"),
    (_raw(message_index="0"), "$.message_index"),
    (_raw(final="yes"), "$.final"),
    (_raw(text=5), "$.text"),
    (_raw(seq=_DROP), "seq"),
    (_raw(role=_DROP, message_index=_DROP), "message_index, role"),
    (b'{"type": "end"}', "conversation_id"),
    (_raw(extra=True), "unknown field `extra`"),
    (_raw(role="bot"), "$.role"),
    (_raw(seq=-1), "$.seq"),
    (_raw(message_index=-2), "$.message_index"),
    (_raw(type="start"), "$.type"),
    (_raw(conversation_id=""), "$.conversation_id"),
    (_raw(conversation_id="c" * 257), "$.conversation_id"),
    (_raw(reasoning=True), "only assistant messages carry reasoning"),
    (BAD_UTF8, f"invalid UTF-8 at byte {BAD_UTF8.index(0xFF)}"),
    (b'{"conversation_id":"c","message_index":0,"role":"user","seq":0,"text":"\\ud800"}', "lone surrogate"),
])
def test_each_invalid_delta_class_is_rejected_with_a_reason_naming_the_problem(raw: bytes, reason_part: str) -> None:
    with pytest.raises(MessageError) as caught:
        decode_delta(raw)
    assert reason_part in str(caught.value)


def test_oversized_text_is_rejected_with_its_size_and_the_limit() -> None:
    text = "é" * 600  # 1200 UTF-8 bytes: the limit counts bytes, not characters
    with pytest.raises(MessageError, match=r"oversized text: 1200 bytes > limit 1000"):
        decode_delta(_raw(text=text), max_text_bytes=1000)
    assert decode_delta(_raw(text=text), max_text_bytes=1200).text == text


def test_a_conversation_id_of_exactly_256_characters_is_accepted() -> None:
    assert len(decode_delta(_raw(conversation_id="c" * 256)).conversation_id) == 256


def _body(**changes: Any) -> str:
    return json.dumps({**VALID_DELTA, **changes})


@pytest.mark.parametrize(("raw", "reason_class"), [
    (_raw(seq=2**64), "number out of range"),
    (_raw(seq=2**63), "number out of range"),
    (_raw(message_index=2**64 + 5), "number out of range"),
    (_raw(ts_ms=2**64), "number out of range"),
    (_raw(seq=1.0), "wrong type"),
    (_raw(message_index=1e3), "wrong type"),
    (_raw(seq=True), "wrong type"),
    (_raw(text=[[["deep"]]]), "nested json"),
    ((_body()[:-1] + ', "text": ' + "[" * 100_000 + "]" * 100_000 + "}").encode(), "nested json"),
    (b"\xef\xbb\xbf" + _raw(), "byte order mark"),
    (_body(text="a\u0000b").encode(), "nul character"),
    (_body(conversation_id="c\u0000").encode(), "control character"),
    (_body(tenant="acme\n").encode(), "control character"),
    ((_body()[:-1] + ', "seq": 1}').encode(), "duplicate key"),
    ((_body()[:-1] + ', "te\\u0078t": "x"}').encode(), "duplicate key"),
    (b'{"conversation_id":"c","message_index":0,"role":"user","seq":0,"text":"\\udc00\\ud800"}', "lone surrogate"),
    (b"\xff\xfe" + _raw(), "invalid UTF-8"),
])
def test_hostile_values_get_a_reason_that_names_their_class(raw: bytes, reason_class: str) -> None:
    with pytest.raises(MessageError) as caught:
        decode_delta(raw)
    assert str(caught.value).lower().startswith(reason_class.lower()), str(caught.value)


def test_reasons_quoting_input_are_bounded() -> None:
    raw = json.dumps({**VALID_DELTA, "x" * 100_000: 1}).encode()  # msgspec quotes the unknown field name
    with pytest.raises(MessageError) as caught:
        decode_delta(raw)
    assert len(str(caught.value)) <= MAX_REASON_CHARS
    assert str(caught.value).endswith("[cut]")


def test_the_largest_allowed_integers_are_accepted_and_documented_in_the_schema() -> None:
    delta = decode_delta(_raw(message_index=MAX_MESSAGE_INDEX, seq=MAX_SEQ, ts_ms=MAX_TS_MS))
    assert (delta.message_index, delta.seq, delta.ts_ms) == (MAX_MESSAGE_INDEX, MAX_SEQ, MAX_TS_MS)
    jsonschema.validate(json.loads(encode(delta)), _schema("token-delta.schema.json"))
    props = _schema("token-delta.schema.json")["$defs"]["TokenDelta"]["properties"]
    maxima = {name: next(o["maximum"] for o in props[name]["anyOf"] if "maximum" in o)
              for name in ("message_index", "seq", "ts_ms")}
    assert maxima == {"message_index": MAX_MESSAGE_INDEX, "seq": MAX_SEQ, "ts_ms": MAX_TS_MS}
    for schema in map(_schema, FILES):
        for struct in schema["$defs"].values():
            for name, prop in struct["properties"].items():
                for option in prop.get("anyOf", [prop]):
                    if option.get("type") == "integer":
                        assert option.get("maximum", 2**64) <= 2**63 - 1, name


_FIELD = st.sampled_from(["conversation_id", "message_index", "role", "seq", "text", "tenant", "ts_ms", "final"])
_SCALAR = st.one_of(st.integers(0, 9), st.booleans(), st.none(),
                    st.text(alphabet='ab:," \\{}seqtx', max_size=12))
_SPACE = st.sampled_from(["", " ", "\n", " \t"])


@settings(max_examples=400, deadline=None)
@given(pairs=st.lists(st.tuples(_FIELD, _SCALAR), min_size=1, max_size=8), gap=_SPACE, escape=st.booleans())
def test_the_duplicate_key_check_agrees_with_a_full_parse(pairs: list[tuple[str, Any]], gap: str,
                                                          escape: bool) -> None:
    """The fast key scan (no backslash in the message) refuses exactly the objects a full parse finds
    a repeated key in, whatever the values hold: quotes, colons, key names."""
    def key(name: str) -> str:
        return "\\u0073" + name[1:] if escape and name.startswith("s") else name   # "seq" spelt in escapes

    body = "{" + ",".join(f'{gap}"{key(k)}"{gap}:{gap}{json.dumps(v)}' for k, v in pairs) + "}"
    raw = body.encode()
    json.loads(raw)   # the generator makes valid JSON
    duplicated = len({k for k, _ in pairs}) < len(pairs)
    if duplicated:
        with pytest.raises(MessageError, match="duplicate key"):
            _check_keys_unique(raw)
    else:
        _check_keys_unique(raw)
