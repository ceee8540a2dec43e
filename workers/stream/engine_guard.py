"""Telling an engine that is broken from an input that breaks it.

An engine step can fail because of what one conversation fed it (then that conversation's deltas
go to the DLQ and the rest is judged) or because the engine itself is broken: a CUDA error, an
ONNX Runtime session that died, memory exhausted. The second is not the input's fault, so nothing
may be dead-lettered or committed: the worker retries and, if it persists, exits (see
docs/guarantees.md, "Faults that are not the input's"). A tiny request that any working engine
answers tells the two apart.
"""

from __future__ import annotations

import logging

from pipeline.engine.types import FeedRequest, StreamEngine

log = logging.getLogger("guardstream.stream")

_PROBE_KEY = "\x00guardstream-engine-probe"  # no conversation key starts with NUL
_PROBE_TOKENS = (0, 1, 2, 3)


class EngineFailure(RuntimeError):
    """The model engine fails on a request any working engine answers: the fault is not the input's."""


def engine_answers(engine: StreamEngine) -> bool:
    """Whether the engine still runs a trivial request (its cache entry is dropped afterwards)."""
    try:
        engine.run([FeedRequest(_PROBE_KEY, _PROBE_TOKENS, 0)])
        return True
    except Exception:
        log.debug("engine probe failed", exc_info=True)
        return False
    finally:
        try:
            engine.evict(_PROBE_KEY)
        except Exception:
            log.debug("engine probe eviction failed", exc_info=True)
