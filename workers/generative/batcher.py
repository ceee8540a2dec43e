"""Dynamic batching of Gen rulings, off the event loop.

Requests queue up; a batch is the first request plus whatever arrives within ``max_wait_s``, up
to ``max_batch``. At most ``concurrency`` batches run at once, each in a worker thread (torch
releases the GIL), so the faust event loop keeps consuming while the model works.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from pipeline.gen.moderator import GenRuling
from pipeline.gen.render import ModerationRequest
from workers.generative.metrics import GenMetrics

RuleFn = Callable[[Sequence[ModerationRequest]], list[GenRuling]]


class RulingBatcher:
    def __init__(self, rule: RuleFn, *, max_batch: int, concurrency: int, max_wait_s: float,
                 metrics: GenMetrics) -> None:
        if max_batch < 1 or concurrency < 1:
            raise ValueError("gen_max_batch and gen_concurrency must be at least 1")
        self._rule = rule
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._metrics = metrics
        self._queue: asyncio.Queue[tuple[ModerationRequest, asyncio.Future[GenRuling]]] = asyncio.Queue()
        self._slots = asyncio.Semaphore(concurrency)
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="gen-model")
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._loop_task = asyncio.ensure_future(self._batch_loop())

    def submit(self, request: ModerationRequest) -> asyncio.Future[GenRuling]:
        future: asyncio.Future[GenRuling] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, future))
        return future

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _batch_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self._max_wait_s
            while len(batch) < self._max_batch:
                timeout = deadline - time.monotonic()
                if timeout <= 0 and self._queue.empty():
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(timeout, 0)))
                except TimeoutError:
                    break
            await self._slots.acquire()
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[ModerationRequest, asyncio.Future[GenRuling]]]) -> None:
        try:
            requests = [r for r, _ in batch]
            started = time.perf_counter()
            try:
                results = await asyncio.get_running_loop().run_in_executor(self._executor, self._rule, requests)
            except Exception as exc:
                if len(batch) == 1:
                    if not batch[0][1].done():
                        batch[0][1].set_exception(exc)
                    return
                # One bad request must not sink its batch-mates: rule them one by one.
                for item in batch:
                    await self._run_alone(item)
                return
            self._metrics.batch_size.observe(len(batch))
            self._metrics.model_seconds.observe(time.perf_counter() - started)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._slots.release()

    async def _run_alone(self, item: tuple[ModerationRequest, asyncio.Future[GenRuling]]) -> None:
        request, future = item
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._rule, [request])
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result[0])
