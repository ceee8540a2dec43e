"""``guardstream bench engine --processes N,...``: engine throughput of N worker-like processes on one machine.

Each process is what one stream worker holds: its own ORT session (``cores / N`` intra-op threads)
and its own KV cache, stepping a batch of conversations one token at a time. All processes start
together (a barrier) and run for the same wall time; the result is the sum of their tokens/s. It
shows how a machine's engine throughput grows (or not) with the number of workers on it, without
Kafka in the way (docs/deploy.md).
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class ProcessesPoint:
    processes: int
    threads_per_process: int
    tokens_per_s: float          # all processes together
    tokens_per_s_per_process: float


def measure(export_dir: Path, counts: tuple[int, ...], batch: int, context: int, seconds: float,
            device: str) -> list[dict[str, Any]]:
    from pipeline.errors import UserError
    from pipeline.onnx.session import usable_cores

    cores = usable_cores()
    points = []
    spawn = multiprocessing.get_context("spawn")  # a clean interpreter each: no ORT state shared
    for count in counts:
        threads = max(1, cores // count)
        barrier, results = spawn.Barrier(count), spawn.Queue()
        procs = [spawn.Process(target=_worker, args=(str(export_dir), device, threads, batch, context, seconds,
                                                     barrier, results)) for _ in range(count)]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=seconds + 600) for _ in procs]
        for proc in procs:
            proc.join(60)
        failed = [str(o[1]) for o in outcomes if o[0] == "error"]
        if failed:
            raise UserError(f"an engine process failed: {failed[0]}")
        tokens = [(float(o[1]), float(o[2])) for o in outcomes]
        total = sum(t for t, _ in tokens) / max(s for _, s in tokens)
        points.append(asdict(ProcessesPoint(count, threads, total, total / count)))
    return points


def _worker(export_dir: str, device: str, threads: int, batch: int, context: int, seconds: float,
            barrier: Any, results: Any) -> None:
    import numpy as np

    from pipeline.engine.types import FeedRequest
    from pipeline.onnx.engine import OnnxStreamEngine

    try:
        engine = OnnxStreamEngine.from_dir(export_dir, device=device, threads=threads)
        ids = np.random.default_rng(0).integers(0, engine.info.vocab_size, size=context + 100_000).tolist()
        keys = [f"p{i}" for i in range(batch)]
        engine.run([FeedRequest(k, ids[:context], context) for k in keys])
        barrier.wait(timeout=600)  # a sibling that failed to load breaks the barrier instead of hanging us
        began, length, tokens = time.perf_counter(), context, 0
        while time.perf_counter() - began < seconds:
            length += 1
            engine.run([FeedRequest(k, ids[:length], length - 1) for k in keys])
            tokens += batch
        results.put(("ok", tokens, time.perf_counter() - began))
    except BaseException as exc:  # reported to the parent, which is waiting on the queue
        barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}", 0.0))
