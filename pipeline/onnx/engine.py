"""The incremental Stream engine on onnxruntime alone (no torch on this path).

``run`` takes the whole token sequence each conversation should have now; the engine reuses the
longest cached common prefix (cropping re-tokenised tails and re-rendered history), prefills on a
cache miss, and packs the new tokens of all requests into as few padded ORT calls as the token
and context budgets allow. Causality makes the result independent of chunking and batching up to
float rounding (docs/model.md §6).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engine.types import FeedRequest, HeadOutputs
from pipeline.errors import UserError
from pipeline.onnx import io_names
from pipeline.onnx.batching import Job, absorb_outputs, build_inputs, plan_call
from pipeline.onnx.device_kv import WRITER_FILE, DeviceSlabs, device_call
from pipeline.onnx.kv_cache import ConversationKv, KvCacheStore, KvSlabs
from pipeline.onnx.layout import KV_LAYOUT, MODEL_FILE, OnnxModelInfo, is_export_dir, read_model_info
from pipeline.onnx.session import CUDA, choose_providers, open_session

DEFAULT_KV_CACHE_BYTES = 2 * 1024**3
DEFAULT_MAX_BATCH_TOKENS = 1024
DEFAULT_MAX_BATCH_CONTEXT = 8192
# (batch, new tokens, past) calls run once after loading: a fresh ORT arena is ~3x slower (notes).
WARMUP_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 64, 0), (4, 4, 128), (1, 1, 256))


class OnnxStreamEngine:
    """Implements ``pipeline.engine.types.StreamEngine`` over one ORT session."""

    def __init__(
        self,
        session: Any,
        info: OnnxModelInfo,
        *,
        kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_batch_context: int = DEFAULT_MAX_BATCH_CONTEXT,
        io_binding: bool | None = None,
        device_slabs: DeviceSlabs | None = None,
    ) -> None:
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be at least 1")
        self.session = session
        self.info = info
        self.model_name = info.model_name
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_context = max(max_batch_context, max_batch_tokens)
        self.kv_dtype = np.dtype(np.float16 if info.precision == "fp16" else np.float32)
        self.cache = KvCacheStore(kv_cache_bytes)
        # KV in ONNX Runtime's memory (the GPU under CUDA) when given, else numpy slabs in host memory.
        self.device_slabs = device_slabs
        self.slabs: KvSlabs = device_slabs or KvSlabs(info.num_layers, info.num_kv_heads, info.head_dim,
                                                      self.kv_dtype, slab_bytes_for(kv_cache_bytes),
                                                      MAX_SLAB_SLOTS)
        self.model_calls = 0  # counts ORT calls; tests and benchmarks read it
        self.output_names = [output.name for output in session.get_outputs()]
        on_cuda = CUDA in session.get_providers()[:1]
        # On a GPU, outputs are bound to device memory and copied back once, together; on the CPU the
        # plain call already reads numpy inputs where they lie (io_binding=True runs that path there too).
        self.io_binding = on_cuda if io_binding is None else io_binding
        self.output_device = "cuda" if on_cuda else "cpu"

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_batch_context: int = DEFAULT_MAX_BATCH_CONTEXT,
        threads: int | None = None,
        spin_wait: bool = False,
        warmup: bool = True,
        io_binding: bool | None = None,
        kv_on_device: bool | None = None,
    ) -> OnnxStreamEngine:
        """Load an export directory written by ``guardstream export``."""
        folder = Path(path)
        if not is_export_dir(folder):
            raise UserError(f"{folder} is not a guardstream ONNX export (needs {MODEL_FILE} and metadata); "
                            "create it with `guardstream export --model CHECKPOINT --out DIR`")
        info = read_model_info(folder)
        if info.kv_layout != KV_LAYOUT:
            raise UserError(f"{folder} was exported by an older guardstream (KV layout "
                            f"{info.kv_layout or 'concatenating'!r}, this engine needs {KV_LAYOUT!r}); "
                            "export it again with `guardstream export --model CHECKPOINT --out NEW_DIR`")
        providers = choose_providers(device)
        session = open_session(folder / MODEL_FILE, providers, threads,
                               kv_width=info.num_kv_heads * info.head_dim, spin_wait=spin_wait)
        device_slabs = _device_slabs(folder, info, providers, kv_on_device, kv_cache_bytes)
        engine = cls(session, info, kv_cache_bytes=kv_cache_bytes, max_batch_tokens=max_batch_tokens,
                     max_batch_context=max_batch_context, io_binding=io_binding, device_slabs=device_slabs)
        if warmup:
            engine.warm_up()
        return engine

    # --- StreamEngine ---------------------------------------------------------------------
    def run(self, requests: Sequence[FeedRequest]) -> list[HeadOutputs]:
        results: list[HeadOutputs | None] = [None] * len(requests)
        for wave in _unique_key_waves(requests):
            self._run_wave(wave, results)
        return [r for r in results if r is not None]

    def evict(self, key: str) -> None:
        self.cache.discard(key)

    # --- internals ------------------------------------------------------------------------
    def _run_wave(self, wave: list[tuple[int, FeedRequest]], results: list[HeadOutputs | None]) -> None:
        for _, request in wave:
            self._validate(request)
        jobs = [self._start_job(index, request) for index, request in wave]
        try:
            active = [job for job in jobs if job.remaining > 0]
            while active:
                slots = plan_call(_one_slab(active, self.max_batch_context), self.max_batch_tokens,
                                  self.max_batch_context)
                feed = build_inputs(slots, self.info.num_layers, self.kv_dtype)
                if self.device_slabs is not None:
                    heads = device_call(self.session, self.device_slabs, slots, feed, self.info.num_layers)
                    self.model_calls += 1
                    absorb_outputs(slots, heads, write_kv=False)
                else:
                    outputs = self._call(feed)
                    self.model_calls += 1
                    absorb_outputs(slots, outputs)
                active = [job for job in active if job.remaining > 0]
        except BaseException:
            # A failed call leaves caches half-advanced: forget them; the next request rebuilds.
            for job in jobs:
                self.cache.discard(job.key)
                job.cache.release()
            raise
        for job in jobs:
            results[job.index] = self._collect(job)
            self.cache.put(job.key, job.cache)

    def _call(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.io_binding:
            return list(self.session.run(None, feed))
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, array)
        for name in self.output_names:
            binding.bind_output(name, self.output_device)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def _validate(self, request: FeedRequest) -> None:
        total = len(request.token_ids)
        if not 0 <= request.start <= total:
            raise ValueError(f"request {request.key!r}: start {request.start} outside 0..{total}")
        if total > self.info.max_position_embeddings:
            raise ValueError(f"request {request.key!r}: {total} tokens exceed the model's context of "
                             f"{self.info.max_position_embeddings}")

    def _start_job(self, index: int, request: FeedRequest) -> Job:
        cached = self.cache.take(request.key)  # not `or`: an empty cache is falsy and holds a slot
        cache = cached if cached is not None else self._empty_cache()
        # Outputs come only from fed tokens: keep at most `start` cached positions.
        keep = min(cache.common_prefix(request.token_ids), request.start)
        cache.crop(keep)
        # All the room this request needs, at once: the KV buffers grow (and copy) at most once. On the
        # device one more: each slot's last position stays free as the scatter's scratch target.
        cache.reserve(len(request.token_ids) + (self.device_slabs is not None))
        return Job(index=index, key=request.key, token_ids=request.token_ids, start=request.start,
                   cache=cache, position=keep)

    def _empty_cache(self) -> ConversationKv:
        return self.slabs.new_cache()

    def copy_conversation(self, source: str, target: str) -> None:
        """Give ``target`` a copy of ``source``'s cache (benchmarks fill many conversations this way)."""
        original = self.cache.take(source)
        if original is None:
            raise KeyError(source)
        copy = self.slabs.new_cache()
        copy.reserve(original.capacity)
        assert copy.slab is not None
        self.slabs.move(original, copy.slab, copy.slot)
        copy.token_ids = list(original.token_ids)
        self.cache.put(source, original)
        self.cache.put(target, copy)

    def _collect(self, job: Job) -> HeadOutputs:
        if job.rows:
            columns = [np.concatenate(parts) for parts in zip(*job.rows, strict=True)]
        else:
            columns = [np.zeros((0, int(self._head_width(name))), dtype=np.float32)
                       for name in io_names.HEAD_OUTPUTS]
        return HeadOutputs(risk_logits=columns[0], category_logits=columns[1],
                           query_risk_logits=columns[2], query_category_logits=columns[3])

    def _head_width(self, name: str) -> int:
        for output in self.session.get_outputs():
            if output.name == name:
                return int(output.shape[-1])
        raise KeyError(name)

    def warm_up(self, shapes: Sequence[tuple[int, int, int]] = WARMUP_SHAPES) -> None:
        """Grow ORT's arena with representative shapes so the first real calls are not slow."""
        rng = np.random.default_rng(0)
        for batch, new, past in shapes:
            past = min(past, self.info.max_position_embeddings - new)
            feed: dict[str, np.ndarray] = {
                io_names.INPUT_IDS: rng.integers(0, self.info.vocab_size, size=(batch, new), dtype=np.int64),
                io_names.ATTENTION_MASK: np.ones((batch, past + new), dtype=np.int64),
                io_names.POSITION_IDS: np.tile(np.arange(past, past + new, dtype=np.int64), (batch, 1)),
            }
            shape = (batch, self.info.num_kv_heads, past, self.info.head_dim)
            for name in io_names.past_names(self.info.num_layers):
                feed[name] = np.zeros(shape, dtype=self.kv_dtype)
            self._call(feed)


def _device_slabs(folder: Path, info: OnnxModelInfo, providers: list[str],
                  kv_on_device: bool | None, kv_cache_bytes: int) -> DeviceSlabs | None:
    """Device-resident KV slabs: on by default under CUDA; ``kv_on_device=True`` runs them on the CPU too."""
    on_cuda = providers[0] == CUDA
    wanted = on_cuda if kv_on_device is None else kv_on_device
    if not wanted:
        return None
    writer = folder / WRITER_FILE
    if not writer.is_file():
        raise UserError(f"{folder} has no {WRITER_FILE} (device-resident KV needs it); export it again with "
                        "`guardstream export --model CHECKPOINT --out NEW_DIR`")
    dtype = np.dtype(np.float16 if info.precision == "fp16" else np.float32)
    return DeviceSlabs(str(writer), providers, "cuda" if on_cuda else "cpu", info.num_layers, info.num_kv_heads,
                       info.head_dim, dtype, slab_bytes_for(kv_cache_bytes), MAX_SLAB_SLOTS)


def slab_bytes_for(kv_cache_bytes: int) -> int:
    """Slab size: big enough for wide batches in one call (a call reads one slab), small enough to allocate.

    Host slabs are zero pages until written; device slabs are allocated whole, one per capacity in use.
    """
    return min(8 << 30, max(256 << 20, kv_cache_bytes // 2))


MAX_SLAB_SLOTS = 256


def _one_slab(active: list[Job], max_batch_context: int) -> list[Job]:
    """The jobs of the next call: a window of neighbouring slots of the first job's slab.

    A call over a slab reads its slots ``lo..hi`` whole (idle ones included), so the window is cut
    where its rows x capacity would pass the context budget (at least one job always goes).
    """
    slab = active[0].cache.slab
    if slab is None:
        return [job for job in active if job.cache.slab is None]
    mine = sorted((job for job in active if job.cache.slab is slab), key=lambda job: job.cache.slot)
    first = mine[0].cache.slot
    window = [job for job in mine if (job.cache.slot - first + 1) * (slab.capacity + 1) <= max_batch_context]
    return window or mine[:1]


def _unique_key_waves(requests: Sequence[FeedRequest]) -> Iterator[list[tuple[int, FeedRequest]]]:
    """Split requests into consecutive groups without repeated keys (a key's requests run in order)."""
    wave: list[tuple[int, FeedRequest]] = []
    seen: set[str] = set()
    for index, request in enumerate(requests):
        if request.key in seen:
            yield wave
            wave, seen = [], set()
        wave.append((index, request))
        seen.add(request.key)
    if wave:
        yield wave
