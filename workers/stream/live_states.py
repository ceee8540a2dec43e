"""Conversation states kept decoded in memory between micro-batches.

Without it every batch reads each touched conversation's state from Redis and decodes it, which
at a thousand live conversations costs more host time per delta than the model (docs/benchmarks.md,
"Where a live worker's time goes"). The states here are the ones this worker's judged batches
wrote (or are about to write), so they are what Redis holds once those writes land; the batch's
watermark check (pipeline.state.store.StateStore.load_with_watermarks) still runs on every batch
and says whether Redis is what this worker believes it is.

An entry is used only while it is younger than the state's TTL in Redis minus a margin: an idle
conversation's state expires there (``state_ttl_s``), and its next delta must meet the same
nothing in memory as in Redis, whichever worker or replay judges it.

One writer: the stream worker (workers.stream.worker). It stores a batch's states right after
judging it and clears everything whenever its picture of Redis may be wrong: a failed or rewound
batch, a write conflict, a recovery, a rebalance. The batch processor only reads.

The states of the newest judged batch are never evicted, and no state is aged out before its write
landed: while a batch's Kafka transaction commits, the next batch is judged on its states, and
Redis does not hold them yet (docs/guarantees.md, "Overlapped commits"); the write gives them a
fresh TTL there.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from pipeline.scoring.state import ConversationState


def usable_age_s(state_ttl_s: float) -> float:
    """How long a stored state may be used from memory: short of the TTL its Redis copy got when
    written (which counts from the write, after the batch was judged) by a second or a tenth of
    it, whichever is more."""
    return max(0.0, min(state_ttl_s - 1.0, state_ttl_s * 0.9))


class LiveStates:
    def __init__(self, capacity: int, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = max(0, capacity)
        self.max_age_s = max_age_s
        self._clock = clock
        self._states: OrderedDict[str, tuple[ConversationState, float]] = OrderedDict()
        # Keys of stored batches whose Redis write has not happened yet, oldest first: kept whatever their age.
        self._unwritten: list[frozenset[str]] = []

    def get(self, key: str) -> ConversationState | None:
        entry = self._states.get(key)
        if entry is None:
            return None
        state, stored_at = entry
        if self._clock() - stored_at >= self.max_age_s and not any(key in keys for keys in self._unwritten):
            del self._states[key]   # Redis decides: it may have expired the state by now
            return None
        return state

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def __len__(self) -> int:
        return len(self._states)

    def store(self, states: Mapping[str, ConversationState], dropped: Mapping[str, object]) -> None:
        """A judged batch: ``states`` (those its write stores) are now the newest; ``dropped`` (those it
        may have left half-changed) are read from Redis next time. Then trim to capacity, oldest
        first, never touching this batch's states."""
        now = self._clock()
        for key in dropped:
            self._states.pop(key, None)
        for key, state in states.items():
            self._states[key] = (state, now)
            self._states.move_to_end(key)
        excess = len(self._states) - max(self.capacity, len(states))
        for _ in range(excess):
            self._states.popitem(last=False)
        self._unwritten.append(frozenset(states))

    def written(self) -> None:
        """The oldest stored batch's write landed in Redis: its states age from now on."""
        if self._unwritten:
            self._unwritten.pop(0)

    def clear(self) -> None:
        self._states.clear()
        self._unwritten.clear()
