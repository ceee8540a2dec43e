"""The contract between conversation scoring and any Stream engine (ONNX incremental, torch reference).

A caller says which whole token sequence a conversation should have and from which position it
wants outputs. The engine owns the KV cache: it reuses the longest cached common prefix, crops
what differs (re-tokenised tails, re-rendered history), prefills from scratch on a cache miss, and
batches the requests of many conversations into one run. Callers never touch the cache; they may
ask which conversations it holds (metrics) through :class:`EngineCache`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class FeedRequest:
    key: str                      # conversation key, unique per tenant + conversation
    token_ids: Sequence[int]      # the complete sequence the conversation has now
    start: int                    # outputs wanted for positions [start, len(token_ids))


@dataclass(frozen=True)
class HeadOutputs:
    """Logits (float32) for each requested position, in order: one row per position."""

    risk_logits: np.ndarray            # [n, num_risk_level]        response (assistant) pathway
    category_logits: np.ndarray        # [n, num_category]
    query_risk_logits: np.ndarray      # [n, num_query_risk_level]  query (user) pathway
    query_category_logits: np.ndarray  # [n, num_query_category]

    def __len__(self) -> int:
        return int(self.risk_logits.shape[0])


class EngineCache(Protocol):
    """What a caller may know of an engine's KV cache: whether a conversation is warm, and its size."""

    def __contains__(self, key: object) -> bool: ...

    @property
    def nbytes(self) -> int: ...


class NoCache:
    """The cache of an engine that keeps none (it recomputes every request)."""

    nbytes = 0

    def __contains__(self, key: object) -> bool:
        return False


NO_CACHE = NoCache()


class StreamEngine(Protocol):
    """Anything that turns FeedRequests into per-position head outputs."""

    model_name: str

    @property
    def cache(self) -> EngineCache:
        """Its KV cache, read-only (:data:`NO_CACHE` for an engine without one)."""
        ...

    def run(self, requests: Sequence[FeedRequest]) -> list[HeadOutputs]:
        """One result per request, in order. May split work into several batched model calls."""
        ...

    def evict(self, key: str) -> None:
        """Forget a conversation's cache (its end, or a rebalance took it away)."""
        ...
