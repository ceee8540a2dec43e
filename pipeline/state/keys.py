"""Redis key layout. One place, so that workers, tests and operators agree on it.

State keys are namespaced by tenant so that two tenants may reuse a conversation id without
sharing (or leaking) state. Watermark keys record, per input partition and consumer group, the last
input offset whose effects the state keys reflect.
"""

from __future__ import annotations

NO_TENANT = "-"


def conversation_key(tenant: str | None, conversation_id: str) -> str:
    # The tenant goes first and cannot contain the separator's meaning twice: conversation ids may
    # contain ':' freely because the tenant is the only field before them.
    return f"gs:{tenant or NO_TENANT}:{conversation_id}"


def watermark_key(group: str, topic: str, partition: int) -> str:
    return f"gs:wm:{group}:{topic}:{partition}"


def held_index_key(group: str, topic: str, partition: int) -> str:
    """The partition's index of conversations holding out-of-order deltas (a hash), next to its watermark."""
    return f"gs:held:{group}:{topic}:{partition}"
