"""Redis keys are injective: no two (tenant, conversation) pairs and no other namespace share a key."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.state.keys import (
    CONVERSATION_NS,
    conversation_key,
    held_index_key,
    parse_conversation_key,
    watermark_key,
)

# Alphabets heavy in the characters that broke the old layout (':' '-' 'wm' digits), empty-looking
# strings (space, zero-width, "None"), 256-character ids, plus any text.
_tricky = st.text(alphabet=st.sampled_from(list(":-wmgs0123456789 n t")), min_size=0, max_size=12)
_empty_looking = ["-", ":", "::", "n", "t3", " ", "\u200b", "\ufeff", "null", "None", "n:", "t1:x"]
_ids = st.one_of(_tricky.filter(bool), st.text(min_size=1, max_size=256),
                 st.text(alphabet=":", min_size=256, max_size=256), st.sampled_from(_empty_looking))
_tenants = st.one_of(st.none(), _tricky.filter(bool), st.text(min_size=1, max_size=128),
                     st.sampled_from(["-", "wm", "w", "c", "n", "t0", " ", "\u200b", "None", "null", ":"]))


@settings(max_examples=1500, deadline=None)
@given(a=st.tuples(_tenants, _ids), b=st.tuples(_tenants, _ids))
def test_different_pairs_never_share_a_conversation_key(a: tuple[str | None, str], b: tuple[str | None, str]) -> None:
    assert (conversation_key(*a) == conversation_key(*b)) == (a == b)
    assert parse_conversation_key(conversation_key(*a)) == a


@settings(max_examples=800, deadline=None)
@given(pair=st.tuples(_tenants, _ids), group=_tricky, topic=st.from_regex(r"[a-zA-Z0-9._-]{1,40}", fullmatch=True),
       partition=st.integers(0, 2**31 - 1))
def test_no_conversation_key_reaches_a_watermark_or_held_index(pair: tuple[str | None, str], group: str, topic: str,
                                                 partition: int) -> None:
    key = conversation_key(*pair)
    assert key.startswith(CONVERSATION_NS)
    for other in (watermark_key(group, topic, partition), held_index_key(group, topic, partition)):
        assert key != other and not other.startswith(CONVERSATION_NS)
    assert watermark_key(group, topic, partition) != held_index_key(group, topic, partition)


def test_the_collisions_of_the_old_layout_are_gone() -> None:
    assert conversation_key("acme:x", "y") != conversation_key("acme", "x:y")
    assert conversation_key("-", "c") != conversation_key(None, "c")
    group, topic = "guardstream-stream", "guard.in"
    assert conversation_key("wm", f"{group}:{topic}:0") != watermark_key(group, topic, 0)
    assert conversation_key("w", f"{len(group)}:{group}:{topic}:0") != watermark_key(group, topic, 0)
