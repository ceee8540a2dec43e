"""Feeding token streams to an engine the way the scorer does: growing sequences, outputs from `start`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.engine.types import FeedRequest, StreamEngine


def chunk_ends(length: int, chunk: int | str, rng: np.random.Generator) -> list[int]:
    """End positions of successive chunks; ``chunk`` is a size or "random" (sizes 1..20)."""
    ends, position = [], 0
    while position < length:
        size = int(rng.integers(1, 21)) if chunk == "random" else int(chunk)
        position = min(length, position + size)
        ends.append(position)
    return ends


def feed_in_chunks(engine: StreamEngine, key: str, token_ids: Sequence[int], chunk: int | str,
                   seed: int = 0) -> tuple[np.ndarray, ...]:
    """All positions' head logits, obtained by feeding ``token_ids`` chunk by chunk."""
    rng = np.random.default_rng(seed)
    parts, start = [], 0
    for end in chunk_ends(len(token_ids), chunk, rng):
        (out,) = engine.run([FeedRequest(key, list(token_ids[:end]), start)])
        assert len(out) == end - start
        parts.append((out.risk_logits, out.category_logits, out.query_risk_logits, out.query_category_logits))
        start = end
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def feed_together(engine: StreamEngine, streams: dict[str, Sequence[int]], seed: int = 0) -> dict[str, tuple]:
    """Grow all streams at once, each by a random 1..12 tokens per engine call, all in one ``run``."""
    rng = np.random.default_rng(seed)
    fed = dict.fromkeys(streams, 0)
    parts: dict[str, list[tuple[np.ndarray, ...]]] = {key: [] for key in streams}
    while any(fed[key] < len(ids) for key, ids in streams.items()):
        keys = [key for key, ids in streams.items() if fed[key] < len(ids)]
        requests = []
        for key in keys:
            end = min(len(streams[key]), fed[key] + int(rng.integers(1, 13)))
            requests.append(FeedRequest(key, list(streams[key][:end]), fed[key]))
        for request, out in zip(requests, engine.run(requests), strict=True):
            parts[request.key].append((out.risk_logits, out.category_logits, out.query_risk_logits,
                                       out.query_category_logits))
            fed[request.key] = len(request.token_ids)
    return {key: tuple(np.concatenate(c) for c in zip(*p, strict=True)) for key, p in parts.items()}
