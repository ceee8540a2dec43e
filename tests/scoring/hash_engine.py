"""A deterministic stand-in for the Stream model, for unit tests of scoring logic only.

Each position's logits are a hash of the whole prefix up to it (token ids and order), so outputs
depend on every earlier token as a causal model's do: a wrong token anywhere in the context (a bad
re-render, a tokenization difference) changes every later output. ``bias`` tilts the risk head so
that debounced pairs are common enough to exercise flags.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.engine.types import NO_CACHE, FeedRequest, HeadOutputs

_MASK = (1 << 61) - 1


def _prefix_hashes(token_ids: Sequence[int]) -> list[int]:
    out, h = [], 1469598103934665603
    for tok in token_ids:
        h = (h * 1099511628211 + int(tok) + 1) & _MASK
        out.append(h)
    return out


def _rows(hashes: Sequence[int], width: int, salt: int) -> np.ndarray:
    rows = np.empty((len(hashes), width), dtype=np.float32)
    for i, h in enumerate(hashes):
        for j in range(width):
            x = ((h ^ (salt * 0x9E3779B97F4A7C15 + j * 0xBF58476D1CE4E5B9)) * 0x94D049BB133111EB) & _MASK
            rows[i, j] = (x % 20011) / 2000.0
    return rows


class HashEngine:
    """Implements ``StreamEngine``; records the requests it saw."""

    cache = NO_CACHE

    def __init__(self, bias: Sequence[float] = (0.0, 0.0, 0.0), model_name: str = "hash-engine") -> None:
        self.model_name = model_name
        self.bias = np.asarray(bias, dtype=np.float32)
        self.requests: list[FeedRequest] = []

    def outputs_for(self, token_ids: Sequence[int], start: int) -> HeadOutputs:
        hashes = _prefix_hashes(token_ids)[start:]
        return HeadOutputs(
            risk_logits=_rows(hashes, 3, 1) + self.bias,
            category_logits=_rows(hashes, 8, 2),
            query_risk_logits=_rows(hashes, 3, 3) + self.bias,
            query_category_logits=_rows(hashes, 9, 4),
        )

    def run(self, requests: Sequence[FeedRequest]) -> list[HeadOutputs]:
        self.requests.extend(requests)
        return [self.outputs_for(r.token_ids, r.start) for r in requests]

    def evict(self, key: str) -> None:
        return None
