"""The official approach as an engine, for baselines: every token re-runs the whole prefix, batch 1.

QwenLM/Qwen3Guard's ``stream_moderate_from_ids`` re-feeds the growing sequence for each new
token (docs/model.md §6). Wrapping the real engine this way keeps everything else identical
(topics, worker, scoring), so a benchmark compares only the inference strategy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.engine.types import NO_CACHE, FeedRequest, HeadOutputs, StreamEngine


class FullRecomputeEngine:
    cache = NO_CACHE   # every token recomputes its whole prefix

    def __init__(self, inner: StreamEngine) -> None:
        self.inner = inner
        self.model_name = inner.model_name

    def run(self, requests: Sequence[FeedRequest]) -> list[HeadOutputs]:
        return [self._one(r) for r in requests]

    def _one(self, request: FeedRequest) -> HeadOutputs:
        rows: list[HeadOutputs] = []
        for end in range(request.start + 1, len(request.token_ids) + 1):
            self.inner.evict(request.key)  # no cache: the whole prefix again, as the official code does
            rows.extend(self.inner.run([FeedRequest(request.key, list(request.token_ids[:end]), end - 1)]))
        self.inner.evict(request.key)
        if not rows:
            return self.inner.run([request])[0]
        return HeadOutputs(*(np.concatenate([getattr(r, f) for r in rows]) for f in
                             ("risk_logits", "category_logits", "query_risk_logits", "query_category_logits")))

    def evict(self, key: str) -> None:
        self.inner.evict(key)
