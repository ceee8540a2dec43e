"""Conversation state in Redis, written after Kafka commits and fenced by offset watermarks.

Every write of a partition's states is one atomic Lua call that also advances the partition's
watermark (the last input offset the states reflect). The call succeeds only when the stored
watermark is the one the writer expects to replace. So a writer whose picture of Redis is wrong
(Redis restarted and lost writes; another worker took the partition and moved on) is told so
and recovers by replay instead of silently overwriting newer state or building on lost state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import redis

from pipeline.state.keys import held_index_key, watermark_key

NO_WATERMARK = -1
T = TypeVar("T")
log = logging.getLogger("guardstream.state")

# KEYS[1] = watermark key, KEYS[2] = the partition's held-gap index (a hash: conversation key -> ref).
# ARGV = expected, new, ttl_s, n_sets, n_deletes, n_held, (key, value) * n_sets, deleted keys * n_deletes,
#        (conversation key, ref) * n_held, conversation keys that hold nothing any more...
# Returns the stored watermark when it is not the expected one (nothing written), else -2.
_FENCED_WRITE = """
-- An unreadable watermark counts as none (-1): the partition is replayed and the value replaced.
-- Readable means what StateStore._watermark reads: -1 or 1 to 18 digits.
local raw = redis.call('GET', KEYS[1])
local stored = -1
if raw and string.match(raw, '^%d+$') and #raw <= 18 then
  stored = tonumber(raw)
end
local expected = tonumber(ARGV[1])
if stored ~= expected then
  return stored
end
local ttl = tonumber(ARGV[3])
local n_sets = tonumber(ARGV[4])
local n_deletes = tonumber(ARGV[5])
local n_held = tonumber(ARGV[6])
local i = 7
for _ = 1, n_sets do
  redis.call('SET', ARGV[i], ARGV[i + 1], 'EX', ttl)
  i = i + 2
end
for _ = 1, n_deletes do
  redis.call('DEL', ARGV[i])
  i = i + 1
end
for _ = 1, n_held do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
  i = i + 1
end
if n_held > 0 then
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('SET', KEYS[1], ARGV[2])
return -2
"""
_WRITTEN = -2


@dataclass
class PartitionWrite:
    """The state changes one batch made to one input partition."""

    topic: str
    partition: int
    expected_watermark: int     # what this writer believes Redis holds now
    new_watermark: int          # last input offset of the partition reflected by these states
    states: dict[str, bytes] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    # The partition's index of conversations holding out-of-order deltas, so that a worker that
    # takes the partition over (restart, rebalance) knows whose gaps to time out.
    held: dict[str, bytes] = field(default_factory=dict)     # conversation key -> encoded reference
    unheld: set[str] = field(default_factory=set)            # conversation keys that hold nothing now


@dataclass(frozen=True)
class WriteConflict:
    """Redis did not hold the expected watermark: the partition needs recovery."""

    topic: str
    partition: int
    expected_watermark: int
    stored_watermark: int


class StateStore:
    """Loads and writes conversation states of one consumer group."""

    def __init__(
        self,
        client: redis.Redis,
        group: str,
        ttl_s: int,
        observe_latency: Callable[[str, float], None] | None = None,
    ) -> None:
        self._redis = client
        self._group = group
        self._ttl_s = max(1, int(ttl_s))
        self._script = client.register_script(_FENCED_WRITE)
        self._observe = observe_latency or (lambda op, seconds: None)
        self._reported_corrupt: set[str] = set()

    def _watermark(self, key: str, value: bytes | str | None) -> int:
        """A stored watermark; an unreadable one (not written by a worker) counts as none, so the
        partition is recovered by replay instead of the worker dying on it again and again."""
        if value is None:
            return NO_WATERMARK
        text = value if isinstance(value, bytes) else value.encode()
        if text == b"-1" or (text.isdigit() and len(text) <= 18):
            return int(text)
        if key not in self._reported_corrupt:
            self._reported_corrupt.add(key)
            log.error("unreadable watermark in redis; treating it as absent and replaying the partition",
                      extra={"key": key, "value": repr(bytes(value[:64]) if isinstance(value, bytes) else value[:64])})
        return NO_WATERMARK

    def _timed(self, op: str, call: Callable[[], T]) -> T:
        """``call()`` once, its latency observed. Errors (redis.RedisError) propagate: retrying an
        outage is the caller's job (the stream worker retries with back-off and health checks)."""
        started = time.perf_counter()
        result = call()
        self._observe(op, time.perf_counter() - started)
        return result

    def load(self, keys: Sequence[str]) -> dict[str, bytes]:
        """States of the given conversations; absent (new, ended or expired) ones are left out."""
        return self.load_with_watermarks(keys, "", [])[0]

    def load_with_watermarks(
        self, keys: Sequence[str], topic: str, partitions: Sequence[int]
    ) -> tuple[dict[str, bytes], dict[int, int]]:
        """States and partition watermarks from ONE atomic MGET: a consistent snapshot, so a caller
        can tell whether the states it read are the ones it expects (see StateStore's docstring)."""
        wm_keys = [watermark_key(self._group, topic, p) for p in partitions]
        everything = [*keys, *wm_keys]
        if not everything:
            return {}, {}
        values = self._timed("mget", lambda: self._redis.mget(everything))
        pairs = zip(keys, values[: len(keys)], strict=True)
        states = {k: v if isinstance(v, bytes) else v.encode() for k, v in pairs if v is not None}
        marks = {p: self._watermark(k, v) for p, k, v in zip(partitions, wm_keys, values[len(keys):], strict=True)}
        return states, marks

    def watermarks(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Stored watermark per partition; NO_WATERMARK where none was ever written (or it was lost)."""
        parts = list(partitions)
        if not parts:
            return {}
        wm_keys = [watermark_key(self._group, topic, p) for p in parts]
        values = self._timed("mget", lambda: self._redis.mget(wm_keys))
        return {p: self._watermark(k, v) for p, k, v in zip(parts, wm_keys, values, strict=True)}

    def write(self, writes: Sequence[PartitionWrite]) -> list[WriteConflict]:
        """Apply each partition's changes atomically (one round trip for all); report conflicts."""
        if not writes:
            return []

        def write_all() -> list[int]:
            # Safe to repeat after a lost connection: each call is fenced by the expected watermark,
            # so a write that did land reports a conflict that recovery resolves, never a double apply.
            pipe = self._redis.pipeline(transaction=False)
            for w in writes:
                deleted = sorted(w.deleted - w.states.keys())
                args: list[str | bytes | int] = [w.expected_watermark, w.new_watermark, self._ttl_s, len(w.states),
                                                 len(deleted), len(w.held)]
                for key, value in w.states.items():
                    args.extend((key, value))
                args.extend(deleted)
                for key, ref in w.held.items():
                    args.extend((key, ref))
                args.extend(sorted(w.unheld - w.held.keys()))
                keys = [watermark_key(self._group, w.topic, w.partition),
                        held_index_key(self._group, w.topic, w.partition)]
                self._script(keys=keys, args=args, client=pipe)
            return list(pipe.execute())

        results = self._timed("write", write_all)
        return [
            WriteConflict(w.topic, w.partition, w.expected_watermark, int(r))
            for w, r in zip(writes, results, strict=True)
            if int(r) != _WRITTEN
        ]

    def ping(self) -> None:
        """Raises a redis error when Redis does not answer (no retry: for health probes)."""
        self._redis.ping()

    def held_index(self, topic: str, partition: int) -> dict[str, bytes]:
        """The partition's conversations that hold out-of-order deltas: conversation key -> reference."""
        key = held_index_key(self._group, topic, partition)
        raw = self._timed("hgetall", lambda: self._redis.hgetall(key))
        return {(k.decode() if isinstance(k, bytes) else str(k)): (v if isinstance(v, bytes) else str(v).encode())
                for k, v in raw.items()}

    def memory_usage(self, key: str) -> int | None:
        """Bytes Redis spends on one key (for the docs' bytes-per-token figure)."""
        used = self._redis.memory_usage(key)
        return None if used is None else int(used)

