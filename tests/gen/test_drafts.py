"""Bounded drafts and their append-only changelog records (pure parts; the live worker is in test_worker_kafka)."""

from __future__ import annotations

import copy
import random

import pytest

from pipeline.gen.moderator import GenModerator
from pipeline.gen.render import prompt_request
from schemas.messages import TokenDelta
from workers.generative.assembly import (
    DRAFT_ELISION,
    AssemblyError,
    ConversationDraft,
    DraftLimits,
    RuledOp,
    apply_chunk,
    apply_delta,
    apply_ruled,
    chunk_op,
    encode_op,
    ready_for_ruling,
)
from workers.generative.drafts import (
    CHANGELOG_RECORD_LIMIT,
    RECORD_OVERHEAD,
    DraftStore,
    record_key,
    split_record_key,
    tombstone_keys,
)


def d(index: int, role: str, seq: int, text: str, final: bool = False, conversation: str = "c",
      tenant: str | None = None) -> TokenDelta:
    return TokenDelta(conversation_id=conversation, message_index=index, role=role,  # type: ignore[arg-type]
                      seq=seq, text=text, final=final, tenant=tenant)


def tiny_deltas(index: int, role: str, text: str, size: int = 3) -> list[TokenDelta]:
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    return [d(index, role, seq, piece, final=seq == len(pieces) - 1) for seq, piece in enumerate(pieces)]


def test_a_message_past_the_limit_keeps_its_head_and_tail_and_counts_the_middle() -> None:
    limits = DraftLimits(max_message_chars=1000)
    text = "".join(f"{i:05d} " for i in range(2000))           # 12,000 characters
    draft = ConversationDraft()
    for delta in tiny_deltas(0, "user", text):
        apply_delta(draft, delta, limits)
    message = draft.messages[0]
    elided = len(text) - 1000
    assert message.elided_chars == elided
    assert message.text == text[:500] + DRAFT_ELISION.format(n=elided) + text[-500:]
    assert ready_for_ruling(draft) == {0: prompt_request(message.text, elided_chars=elided)}


def test_out_of_order_chunks_past_the_limit_give_the_same_text() -> None:
    limits = DraftLimits(max_message_chars=100, max_held_chars=50)
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    deltas = tiny_deltas(0, "user", text, size=5)
    shuffled: list[TokenDelta] = []
    for start in range(0, len(deltas), 4):                       # swapped within windows of 4 (held <= 15 chars)
        window = deltas[start:start + 4]
        random.Random(start).shuffle(window)
        shuffled += window
    in_order, out_of_order = ConversationDraft(), ConversationDraft()
    for delta in deltas:
        apply_delta(in_order, delta, limits)
    for delta in shuffled:
        apply_delta(out_of_order, delta, limits)
    assert out_of_order.messages[0].text == in_order.messages[0].text
    assert in_order.messages[0].text == text[:50] + DRAFT_ELISION.format(n=900) + text[-50:]


def test_a_message_under_the_limit_is_whole() -> None:
    draft = ConversationDraft()
    for delta in tiny_deltas(0, "user", "x" * 999):
        apply_delta(draft, delta, DraftLimits(max_message_chars=1000))
    assert draft.messages[0].text == "x" * 999 and draft.messages[0].elided_chars == 0


def test_held_chunks_past_their_limit_are_refused_and_the_draft_is_intact() -> None:
    limits = DraftLimits(max_held_chars=10)
    draft = ConversationDraft()
    apply_delta(draft, d(0, "user", 1, "0123456789"), limits)    # held: seq 0 missing
    before = copy.deepcopy(draft)
    with pytest.raises(AssemblyError, match="gen_max_held_chars"):
        apply_delta(draft, d(0, "user", 2, "x"), limits)
    assert draft == before
    apply_delta(draft, d(0, "user", 0, "a", final=False), limits)
    apply_delta(draft, d(0, "user", 2, "b", final=True), limits)
    assert draft.messages[0].text == "a0123456789b"


def test_messages_per_conversation_are_bounded() -> None:
    limits = DraftLimits(max_messages=3)
    draft = ConversationDraft()
    for index in range(3):
        apply_delta(draft, d(index, "user", 0, "q"), limits)
    with pytest.raises(AssemblyError, match="gen_max_messages"):
        apply_delta(draft, d(3, "user", 0, "q"), limits)
    assert set(draft.messages) == {0, 1, 2}


@pytest.mark.parametrize("field", ["message_index", "seq"])
def test_integers_past_64_bits_are_refused_not_crashed_on(field: str) -> None:
    values = {"message_index": 0, "seq": 0, field: 2**64}
    delta = TokenDelta(conversation_id="c", role="user", text="x", **values)  # type: ignore[arg-type]
    with pytest.raises(AssemblyError, match="past"):
        chunk_op(delta)
    assert encode_op(chunk_op(d(2**63 - 1, "user", 2**63 - 1, "x")))


def test_a_changelog_record_stays_under_the_kafka_limit_for_the_largest_delta() -> None:
    max_text_bytes = CHANGELOG_RECORD_LIMIT - RECORD_OVERHEAD
    text = "\U0001F600" * (max_text_bytes // 4)                  # 4 UTF-8 bytes per character
    delta = TokenDelta(conversation_id="\U0001F600" * 256, message_index=2**63 - 1, role="assistant",
                       seq=2**63 - 1, text=text, final=True, tenant="\U0001F600" * 256)
    key = record_key(delta.conversation_id.encode(), 2**64 - 1)
    assert len(key) + len(encode_op(chunk_op(delta))) < CHANGELOG_RECORD_LIMIT


def _worker_records(deltas: list[TokenDelta], limits: DraftLimits,
                    ruled_after: dict[int, int]) -> tuple[dict[bytes, ConversationDraft], list[tuple[bytes, bytes]]]:
    """What the worker appends to the changelog for ``deltas`` (``ruled_after``: delta position -> message)."""
    drafts: dict[bytes, ConversationDraft] = {}
    records: list[tuple[bytes, bytes]] = []
    for position, delta in enumerate(deltas):
        key = delta.conversation_id.encode()
        draft = drafts.setdefault(key, ConversationDraft())
        op = chunk_op(delta)
        try:
            applied = apply_chunk(draft, op, limits)
        except AssemblyError:
            continue
        if applied:
            records.append((record_key(key, draft.next_record), encode_op(op)))
            draft.next_record += 1
        if position in ruled_after and apply_ruled(draft, RuledOp(ruled_after[position])):
            records.append((record_key(key, draft.next_record), encode_op(RuledOp(ruled_after[position]))))
            draft.next_record += 1
    return drafts, records


def test_replaying_the_changelog_rebuilds_the_same_drafts_even_when_read_twice() -> None:
    limits = DraftLimits(max_message_chars=64, max_held_chars=40)
    rng = random.Random(7)
    deltas: list[TokenDelta] = []
    for conversation in ("a", "b", "c:1"):
        for index, role in enumerate(["user", "assistant", "user"]):
            text = "".join(rng.choice("xyz \u00e9\U0001F600") for _ in range(rng.randint(0, 200)))
            pieces = tiny_deltas(index, role, text or "-", size=rng.randint(1, 9))
            pieces = [TokenDelta(**{**{f: getattr(p, f) for f in p.__struct_fields__}, "conversation_id": conversation,
                                    "tenant": "acme"}) for p in pieces]
            deltas += pieces + rng.sample(pieces, min(3, len(pieces)))      # duplicates, some out of order
    rng.shuffle(deltas)
    drafts, records = _worker_records(deltas, limits, ruled_after={len(deltas) // 2: 0})
    for reads in (1, 2):                 # faust may re-read records it already applied
        store = DraftStore(limits)
        for _ in range(reads):
            for key, value in records:
                store.apply_record(0, key, value, 1.0)
        assert store.skipped_records == 0
        assert set(store.drafts) == set(drafts)
        for key, draft in drafts.items():
            rebuilt = store.drafts[key]
            assert (rebuilt.tenant, rebuilt.messages, rebuilt.next_record) == (draft.tenant, draft.messages,
                                                                             draft.next_record)


def test_tombstones_drop_the_draft_and_unknown_records_are_skipped() -> None:
    store = DraftStore(DraftLimits())
    drafts, records = _worker_records(tiny_deltas(0, "user", "hello there"), DraftLimits(), {})
    for key, value in records:
        store.apply_record(3, key, value, 5.0)
    assert store.get(b"c") is not None and store.get(b"c").last_seen_s == 5.0  # type: ignore[union-attr]
    store.apply_record(3, b"c", b"an old whole-draft record", 6.0)
    store.apply_record(3, record_key(b"c", 99), b"\xc1garbage", 6.0)
    assert store.skipped_records == 2
    for key in tombstone_keys(b"c", drafts[b"c"]):
        store.apply_record(3, key, None, 7.0)
    assert store.get(b"c") is None
    assert split_record_key(record_key(b"x\x00y", 5)) == (b"x\x00y", 5)


def test_changelog_bytes_grow_with_the_text_not_with_the_draft() -> None:
    # One 60,000-character message as 20,000 3-character deltas: each record holds one delta.
    text = "abc" * 20_000
    _, records = _worker_records(tiny_deltas(0, "assistant", text), DraftLimits(), {})
    assert len(records) == 20_000
    assert max(len(k) + len(v) for k, v in records) < 40
    assert sum(len(k) + len(v) for k, v in records) < len(text) + 20_000 * 40


def test_idle_drafts_are_listed_for_expiry() -> None:
    store = DraftStore(DraftLimits())
    store.get_or_new(b"old", 0).last_seen_s = 100.0
    store.get_or_new(b"new", 0).last_seen_s = 190.0
    assert list(store.idle(200.0, 60)) == [b"old"]
    store.retain_partitions({1})
    assert len(store) == 0


def test_a_ruling_on_an_elided_draft_reports_truncated_tokens(gen_moderator: GenModerator) -> None:
    text = "word " * 200 + DRAFT_ELISION.format(n=5000) + "word " * 200
    whole, elided = gen_moderator.rule([prompt_request("word " * 400), prompt_request(text, elided_chars=5000)])
    assert whole.truncated_tokens == 0
    assert 500 <= elided.truncated_tokens <= 5000     # ~1 token per "word " (5 characters)


def test_the_worker_refuses_a_text_limit_whose_records_could_pass_the_kafka_limit() -> None:
    from pipeline.config import Settings
    from pipeline.errors import UserError
    from workers.generative.app import check_limits

    check_limits(Settings(max_text_bytes=CHANGELOG_RECORD_LIMIT - RECORD_OVERHEAD))
    with pytest.raises(UserError, match="at most 995904"):
        check_limits(Settings(max_text_bytes=CHANGELOG_RECORD_LIMIT))
