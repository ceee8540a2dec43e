"""Redis key layout. One place, so that both workers, tests and operators agree on it.

Keys are injective: two different (tenant, conversation id) pairs never share a key, and no
conversation key can equal a key of another namespace, whatever the strings hold (':', '-', digits,
anything up to the schema's length limits). Each key is ``gs:`` + a namespace letter:

- ``gs:c:n:{conversation_id}`` a conversation without a tenant;
- ``gs:c:t{len(tenant)}:{tenant}:{conversation_id}`` a conversation of a tenant: the length says
  where the tenant ends, so ':' in either part cannot shift the boundary;
- ``gs:w:{len(group)}:{group}:{topic}:{partition}`` a stream group's watermark of one input partition;
- ``gs:h:{len(group)}:{group}:{topic}:{partition}`` the index of that partition's conversations that
  hold out-of-order deltas.

Lengths count characters (code points); keys are UTF-8 encoded by the Redis client, which is itself
injective for the valid Unicode the input schema admits. The layout changed in schema v1's
hardening (docs/guarantees.md): keys of the older layout are not read and simply expire after
``state_ttl_s``; their watermarks are not found, so a worker recovers its partitions by replay.
"""

from __future__ import annotations

PREFIX = "gs:"
CONVERSATION_NS = "gs:c:"
WATERMARK_NS = "gs:w:"
HELD_INDEX_NS = "gs:h:"


def conversation_key(tenant: str | None, conversation_id: str) -> str:
    """The state key of one conversation of one tenant (None: no tenant, distinct from every tenant)."""
    if tenant is None:
        return f"{CONVERSATION_NS}n:{conversation_id}"
    return f"{CONVERSATION_NS}t{len(tenant)}:{tenant}:{conversation_id}"


def watermark_key(group: str, topic: str, partition: int) -> str:
    return f"{WATERMARK_NS}{len(group)}:{group}:{topic}:{partition}"


def held_index_key(group: str, topic: str, partition: int) -> str:
    """The partition's index of conversations holding out-of-order deltas (a hash), next to its watermark."""
    return f"{HELD_INDEX_NS}{len(group)}:{group}:{topic}:{partition}"


def parse_conversation_key(key: str) -> tuple[str | None, str]:
    """(tenant, conversation id) of a key made by :func:`conversation_key` (for operators and tests)."""
    if not key.startswith(CONVERSATION_NS):
        raise ValueError(f"not a conversation key: {key[:80]!r}")
    rest = key[len(CONVERSATION_NS):]
    if rest.startswith("n:"):
        return None, rest[2:]
    length, sep, body = rest[1:].partition(":")
    if not rest.startswith("t") or not sep or not length.isdigit():
        raise ValueError(f"not a conversation key: {key[:80]!r}")
    n = int(length)
    if len(body) < n + 1 or body[n] != ":":
        raise ValueError(f"not a conversation key: {key[:80]!r}")
    return body[:n], body[n + 1:]
