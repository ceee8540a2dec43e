"""The measurements of ``guardstream bench engine`` (ORT engine only; no torch).

Every case times ``OnnxStreamEngine.run`` the way the worker calls it. The baseline is the
official approach (QwenLM/Qwen3Guard#22): re-run the whole prefix for every new token, batch 1,
no cache; it runs on the same ORT session, in the same process, right after the cached cases.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.engine.types import FeedRequest
from pipeline.onnx.engine import OnnxStreamEngine


@dataclass(frozen=True)
class BenchPlan:
    contexts: tuple[int, ...]           # per-token cost vs context
    baseline_contexts: tuple[int, ...]  # where the re-run-the-prefix baseline is measured too
    batch_sizes: tuple[int, ...]
    chunk_sizes: tuple[int, ...]
    batch_context: int                  # context of each conversation in the batch/chunk cases
    repeats: int                        # timed repeats of each cached step (the fastest is reported)
    baseline_repeats: int               # timed repeats of each full re-run

    @classmethod
    def full(cls) -> BenchPlan:
        return cls(contexts=(256, 512, 1024, 2048, 4096, 8000), baseline_contexts=(256, 1024, 2048),
                   batch_sizes=(1, 2, 4, 8, 16, 32), chunk_sizes=(1, 4, 16, 64), batch_context=256, repeats=7,
                   baseline_repeats=2)

    @classmethod
    def quick(cls) -> BenchPlan:
        return cls(contexts=(32, 64, 128), baseline_contexts=(32, 64), batch_sizes=(1, 2, 4),
                   chunk_sizes=(1, 4), batch_context=32, repeats=2, baseline_repeats=1)


@dataclass
class ContextPoint:
    context: int
    kv_mib: float                 # KV the step must read
    one_token_ms: float           # one new token on a cached context
    chunk16_ms_per_token: float   # a 16-token chunk on a cached context, per token
    baseline_ms_per_token: float | None = None   # re-run the whole prefix (context + 1 tokens)
    speedup: float | None = None  # baseline / one_token


@dataclass
class ThroughputPoint:
    size: int            # batch size or chunk size
    tokens_per_s: float  # from the fastest repeat
    ms_per_call: float   # the fastest repeat
    p50_ms: float | None = None  # median and 99th percentile of the repeats (per-step latency)
    p99_ms: float | None = None


@dataclass
class BenchResult:
    contexts: list[ContextPoint] = field(default_factory=list)
    batches: list[ThroughputPoint] = field(default_factory=list)
    chunks: list[ThroughputPoint] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[str], None]


def _timed_run(engine: OnnxStreamEngine, requests: list[FeedRequest]) -> float:
    began = time.perf_counter()
    engine.run(requests)
    return time.perf_counter() - began


def _best(values: Sequence[float]) -> float:
    # The fastest repeat: the 2 cores are shared with other processes, whose load only ever adds time.
    return float(min(values))


class EngineBench:
    def __init__(self, engine: OnnxStreamEngine, plan: BenchPlan, progress: Progress, seed: int = 0) -> None:
        self.engine = engine
        self.plan = plan
        self.say = progress
        longest = max(plan.contexts + plan.baseline_contexts + (plan.batch_context,)) + 256
        self.ids = np.random.default_rng(seed).integers(0, engine.info.vocab_size, size=longest).tolist()

    def run(self) -> BenchResult:
        result = BenchResult(contexts=self.context_curve())
        self.baseline(result.contexts)
        result.batches = self.batch_curve()
        result.chunks = self.chunk_curve()
        return result

    # --- cost vs context --------------------------------------------------------------------
    def context_curve(self) -> list[ContextPoint]:
        """Grow one conversation to each context, then time single-token and 16-token steps on it."""
        engine, points, key = self.engine, [], "context-curve"
        per_token_bytes = engine.info.kv_bytes_per_token
        for context in self.plan.contexts:
            self.say(f"context {context}: prefill")
            engine.run([FeedRequest(key, self.ids[:context], context)])
            self._step(key, context, 1), self._step(key, context, 16)  # untimed: first use of these shapes
            singles = [self._step(key, context, 1) for _ in range(self.plan.repeats)]
            chunks = [self._step(key, context, 16) / 16 for _ in range(self.plan.repeats)]
            point = ContextPoint(context, context * per_token_bytes / 2**20, 1000 * _best(singles),
                                 1000 * _best(chunks))
            self.say(f"context {context}: {point.one_token_ms:.1f} ms/token")
            points.append(point)
        engine.evict(key)
        return points

    def _timed_run(self, requests: list[FeedRequest]) -> float:
        return _timed_run(self.engine, requests)

    def _step(self, key: str, context: int, new: int) -> float:
        """Time feeding ``new`` tokens on top of exactly ``context`` cached ones (cropped back after)."""
        ids = self.ids[: context + new]
        seconds = _timed_run(self.engine, [FeedRequest(key, ids, context)])
        # Crop back so every repeat reads the same context.
        self.engine.run([FeedRequest(key, ids[:context], context)])
        return seconds

    def baseline(self, points: list[ContextPoint]) -> None:
        """The official way: every token re-runs the whole prefix (no cache, batch 1)."""
        by_context = {p.context: p for p in points}
        for context in self.plan.baseline_contexts:
            self.say(f"baseline {context}: full re-run")
            uncached = OnnxStreamEngine(self.engine.session, self.engine.info, max_batch_tokens=context + 1,
                                        max_batch_context=context + 1)
            request = FeedRequest("baseline", self.ids[: context + 1], context)
            runs = []
            for _ in range(self.plan.baseline_repeats):
                runs.append(_timed_run(uncached, [request]))
                uncached.evict("baseline")
            point = by_context.get(context)
            if point is None:
                continue
            point.baseline_ms_per_token = 1000 * _best(runs)
            point.speedup = point.baseline_ms_per_token / point.one_token_ms

    # --- throughput --------------------------------------------------------------------------
    def _prefilled(self, keys: Sequence[str]) -> None:
        """Give every key the same cached context (copies of one prefill: compute does not depend on ids)."""
        context = self.plan.batch_context
        self.engine.run([FeedRequest(keys[0], self.ids[:context], context)])
        for key in keys[1:]:
            self.engine.copy_conversation(keys[0], key)

    def batch_curve(self) -> list[ThroughputPoint]:
        points, context = [], self.plan.batch_context
        for size in self.plan.batch_sizes:
            keys = [f"batch-{size}-{i}" for i in range(size)]
            self._prefilled(keys)
            calls = []
            self.engine.run([FeedRequest(k, self.ids[: context + 1], context) for k in keys])  # untimed warm-up
            for r in range(1, self.plan.repeats + 1):
                requests = [FeedRequest(k, self.ids[: context + r + 1], context + r) for k in keys]
                calls.append(self._timed_run(requests))
            for key in keys:
                self.engine.evict(key)
            seconds = _best(calls)
            p50, p99 = (1000 * float(np.percentile(calls, q)) for q in (50, 99))
            points.append(ThroughputPoint(size, size / seconds, 1000 * seconds, p50, p99))
            self.say(f"batch {size}: {size / seconds:.1f} tokens/s")
        return points

    def chunk_curve(self) -> list[ThroughputPoint]:
        points, context = [], self.plan.batch_context
        for size in self.plan.chunk_sizes:
            self._prefilled(["chunk"])
            self._step("chunk", context, size)  # untimed: first use of this shape
            calls = [self._step("chunk", context, size) for _ in range(self.plan.repeats)]
            self.engine.evict("chunk")
            seconds = _best(calls)
            points.append(ThroughputPoint(size, size / seconds, 1000 * seconds))
            self.say(f"chunk {size}: {size / seconds:.1f} tokens/s")
        return points
