"""Packing many conversations' new tokens into padded batched model calls.

Layout of one call with B conversations and S = longest new chunk: the past input holds each
conversation's cached positions first (then masked free room), each chunk is right-padded to S
(padding last, never read). The graph returns only the new tokens' keys and values, which are
written into each conversation's KV buffer where they belong. Position ids are explicit, so
padding never shifts a conversation's positions (docs/onnx-export.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.onnx import io_names
from pipeline.onnx.kv_cache import ConversationKv, KvSlab

PAD_TOKEN_ID = 0  # any valid id: padded positions are masked as keys and their outputs are dropped


@dataclass
class Job:
    """One request in flight: feed ``token_ids[position:]`` on top of ``cache``; keep rows from ``start``."""

    index: int
    key: str
    token_ids: Sequence[int]
    start: int
    cache: ConversationKv
    position: int
    rows: list[list[np.ndarray]] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return len(self.token_ids) - self.position


@dataclass(frozen=True)
class Slot:
    job: Job
    count: int  # new tokens fed for this job in this call


def plan_call(active: Sequence[Job], max_batch_tokens: int, max_batch_context: int) -> list[Slot]:
    """Choose the jobs and chunk sizes of the next model call.

    Bounds: padded new tokens (B x S) <= max_batch_tokens, and padded context B x (P + S) <=
    max_batch_context unless a single job alone needs more (its past must be read anyway).
    Jobs with similar past lengths are grouped so padding of the past stays small.
    """
    ordered = sorted(active, key=lambda job: len(job.cache))
    chosen: list[Job] = []
    longest_past = 0
    for job in ordered:
        past = max(longest_past, len(job.cache))
        count = len(chosen) + 1
        fits_tokens = count <= max_batch_tokens
        fits_context = count * (past + 1) <= max_batch_context
        if chosen and not (fits_tokens and fits_context):
            break
        chosen.append(job)
        longest_past = past
    per_job = max(1, max_batch_tokens // len(chosen))
    if len(chosen) > 1:
        # Leave room in the context budget for the chunk itself.
        per_job = max(1, min(per_job, max_batch_context // len(chosen) - longest_past))
    return [Slot(job, min(per_job, job.remaining)) for job in chosen]


def shared_slab(slots: Sequence[Slot]) -> KvSlab | None:
    """The slab all the call's conversations live in, if they share one."""
    slab = slots[0].job.cache.slab
    if slab is None or any(slot.job.cache.slab is not slab for slot in slots):
        return None
    return slab


def call_rows(slots: Sequence[Slot]) -> tuple[int, list[int]]:
    """(rows of the call, each slot's row): a shared slab's slot range ``lo..hi``, else one row each."""
    slab = shared_slab(slots)
    if slab is None or len(slots) == 1:
        return len(slots), list(range(len(slots)))
    lo = min(slot.job.cache.slot for slot in slots)
    hi = max(slot.job.cache.slot for slot in slots)
    return hi - lo + 1, [slot.job.cache.slot - lo for slot in slots]


def build_inputs(slots: Sequence[Slot], num_layers: int, kv_dtype: np.dtype) -> dict[str, np.ndarray]:
    """The feed dict of one call (see module docstring for the layout).

    One conversation, or several in one slab: the KV buffers are the past inputs as they are (no
    copy; a slab's slots ``lo..hi`` are one array, a slot in that range but not in the call is an
    idle row: its mask marks nothing and its outputs are dropped). Otherwise the call gathers the
    cached positions into a ``[B, kv_heads, P, head_dim]`` input (P = longest cache), a copy of the
    past per call.
    """
    rows, row_of = call_rows(slots)
    slab = shared_slab(slots)
    new = max(slot.count for slot in slots)
    if len(slots) == 1:
        past = slots[0].job.cache.capacity
    elif slab is not None:
        past = slab.capacity
    else:
        past = max(len(slot.job.cache) for slot in slots)
    input_ids = np.full((rows, new), PAD_TOKEN_ID, dtype=np.int64)
    attention_mask = np.zeros((rows, past + new), dtype=np.int64)
    position_ids = np.zeros((rows, new), dtype=np.int64)
    for row, slot in zip(row_of, slots, strict=True):
        job, count = slot.job, slot.count
        mine = len(job.cache)
        input_ids[row, :count] = job.token_ids[job.position: job.position + count]
        attention_mask[row, :mine] = 1
        attention_mask[row, past: past + count] = 1
        position_ids[row] = np.arange(mine, mine + new)
    feed = {io_names.INPUT_IDS: input_ids, io_names.ATTENTION_MASK: attention_mask,
            io_names.POSITION_IDS: position_ids}
    names = io_names.past_names(num_layers)
    if slab is not None and not slab.arrays:
        return feed  # device-resident slab: the past is bound by pointer (pipeline/onnx/device_kv.py)
    if len(slots) == 1:
        tensors = slots[0].job.cache.tensors
        for i, name in enumerate(names):
            feed[name] = tensors[i][np.newaxis]
        return feed
    if slab is not None:
        lo = min(slot.job.cache.slot for slot in slots)
        for i, name in enumerate(names):
            feed[name] = slab.arrays[i][lo: lo + rows]
        return feed
    kv_heads, _, head_dim = slots[0].job.cache.tensors[0].shape
    for i, name in enumerate(names):
        # Zeros, not empty: masked positions must hold finite numbers (a masked NaN still poisons).
        stacked = np.zeros((rows, kv_heads, past, head_dim), dtype=kv_dtype)
        for row, slot in zip(row_of, slots, strict=True):
            mine = len(slot.job.cache)
            if mine:
                stacked[row, :, :mine] = slot.job.cache.tensors[i][:, :mine]
        feed[name] = stacked
    return feed


def absorb_outputs(slots: Sequence[Slot], outputs: Sequence[np.ndarray], write_kv: bool = True) -> None:
    """Append each job's wanted head rows and write the new keys/values into its KV buffers in place.

    ``write_kv=False``: the new keys/values were already written where the buffers live (device).
    """
    heads, new_kv = outputs[: len(io_names.HEAD_OUTPUTS)], outputs[len(io_names.HEAD_OUTPUTS):]
    _, row_of = call_rows(slots)
    for b, slot in zip(row_of, slots, strict=True):
        job, count = slot.job, slot.count
        first_wanted = max(0, job.start - job.position)
        if first_wanted < count:
            job.rows.append([np.asarray(h[b, first_wanted:count], dtype=np.float32) for h in heads])
        cache = job.cache
        if write_kv:
            mine = len(cache)
            cache.reserve(mine + count)
            for tensor, produced in zip(cache.tensors, new_kv, strict=True):
                tensor[:, mine: mine + count] = produced[b, :, :count]
        cache.token_ids.extend(job.token_ids[job.position: job.position + count])
        job.position += count


def empty_cache(num_layers: int, kv_heads: int, head_dim: int, dtype: np.dtype) -> ConversationKv:
    tensors = [np.zeros((kv_heads, 0, head_dim), dtype=dtype) for _ in range(2 * num_layers)]
    return ConversationKv(token_ids=[], tensors=tensors)
