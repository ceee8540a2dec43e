"""KV slabs in ONNX Runtime's own memory (the GPU under CUDA), read and written where they lie.

The slabs are ``OrtValue``s; a call binds a slab's slot range as the past inputs by pointer
(IOBinding), binds the new keys/values as outputs on the same device, and writes them into the
slab with the export's small ``kv_writer.onnx`` graph: one ``ScatterND`` per layer and K/V whose
input and output are bound to the same slab, which ONNX Runtime then updates in place instead of
copying it (docs/onnx-export.md). Nothing of the past crosses to the host.

Scatter targets must be distinct for real positions; padded positions and idle rows all write to
each slot's last position, which the engine keeps free (capacity > cached length at all times):
duplicate writes there are garbage over garbage, masked out like every free position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from pipeline.onnx import io_names
from pipeline.onnx.batching import Slot, call_rows, shared_slab
from pipeline.onnx.kv_cache import ConversationKv, KvSlab, KvSlabs
from pipeline.onnx.layout import WRITER_FILE

__all__ = ["WRITER_FILE", "DeviceSlabs", "device_call", "scatter_indices"]


def writer_input_names(count: int) -> list[str]:
    return [*(f"slab.{j}" for j in range(count)), "indices", *(f"update.{j}" for j in range(count))]


def writer_output_names(count: int) -> list[str]:
    return [f"slab_out.{j}" for j in range(count)]


class DeviceSlab(KvSlab):
    def __init__(self, owner: DeviceSlabs, count: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: np.dtype, slots: int) -> None:
        self.owner = owner
        self.values: list[ort.OrtValue] = []
        super().__init__(count, kv_heads, capacity, head_dim, dtype, slots, owner.drop_if_empty)
        self.shape = [slots, kv_heads, capacity, head_dim]
        self.slot_stride = kv_heads * capacity * head_dim * np.dtype(dtype).itemsize

    def _allocate(self, shape: tuple[int, int, int, int], dtype: np.dtype, count: int) -> list[np.ndarray]:
        # Free positions must hold finite numbers: start from zeros (copied in once per slab).
        zeros = np.zeros(shape, dtype=dtype)
        for _ in range(count):
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self.owner.device, 0)
            value.update_inplace(zeros)
            self.values.append(value)
        return []

    def views(self, slot: int) -> list[np.ndarray]:
        return []

    def pointer(self, j: int, slot: int) -> int:
        return int(self.values[j].data_ptr()) + slot * self.slot_stride


class DeviceSlabs(KvSlabs):
    """Slabs as device ``OrtValue``s plus the writer session that scatters new keys/values into them."""

    def __init__(self, writer_path: str, providers: list[str], device: str, num_layers: int, kv_heads: int,
                 head_dim: int, dtype: np.dtype, slab_bytes: int = 1 << 30, max_slots: int = 64) -> None:
        super().__init__(num_layers, kv_heads, head_dim, dtype, slab_bytes, max_slots)
        self.device = device
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.writer = ort.InferenceSession(writer_path, sess_options=options, providers=providers)

    def _new_slab(self, capacity: int, slots: int) -> KvSlab:
        count, kv_heads, head_dim = self.shape
        return DeviceSlab(self, count, kv_heads, capacity, head_dim, self.dtype, slots)

    def move(self, cache: ConversationKv, slab: KvSlab, slot: int) -> None:
        old = cache.slab
        assert isinstance(old, DeviceSlab) and isinstance(slab, DeviceSlab)
        _, kv_heads, head_dim = self.shape
        positions = old.capacity
        indices = scatter_indices([slot], kv_heads, positions, [0], [positions], slab.capacity - 1)
        shape = [1, kv_heads, positions, head_dim]
        self.scatter(slab, indices, [(old.pointer(j, cache.slot), shape) for j in range(self.shape[0])])

    def scatter(self, slab: DeviceSlab, indices: np.ndarray, updates: Sequence[Any]) -> None:
        """slab[indices] = updates for every layer and K/V, in place (input and output are one buffer)."""
        binding = self.writer.io_binding()
        element = self.dtype.type
        for j, update in enumerate(updates):
            pointer = slab.pointer(j, 0)
            binding.bind_input(f"slab.{j}", self.device, 0, element, slab.shape, pointer)
            binding.bind_output(f"slab_out.{j}", self.device, 0, element, slab.shape, pointer)
            if isinstance(update, ort.OrtValue):
                binding.bind_ortvalue_input(f"update.{j}", update)
            else:
                update_pointer, shape = update
                binding.bind_input(f"update.{j}", self.device, 0, element, shape, update_pointer)
        binding.bind_cpu_input("indices", indices)
        self.writer.run_with_iobinding(binding)


def scatter_indices(slots: Sequence[int], kv_heads: int, width: int, starts: Sequence[int],
                    counts: Sequence[int], scratch: int) -> np.ndarray:
    """``[rows, kv_heads, width, 3]`` targets (slot, head, position); positions past a row's count go to scratch."""
    rows = len(slots)
    indices = np.empty((rows, kv_heads, width, 3), dtype=np.int64)
    indices[..., 0] = np.asarray(slots, dtype=np.int64)[:, None, None]
    indices[..., 1] = np.arange(kv_heads, dtype=np.int64)[None, :, None]
    offsets = np.arange(width, dtype=np.int64)[None, :]
    positions = np.asarray(starts, dtype=np.int64)[:, None] + offsets
    positions = np.where(offsets < np.asarray(counts, dtype=np.int64)[:, None], positions, scratch)
    indices[..., 2] = positions[:, None, :]
    return indices


def device_call(session: Any, slabs: DeviceSlabs, slots: Sequence[Slot], feed: dict[str, np.ndarray],
                num_layers: int) -> list[np.ndarray]:
    """One model call on device-resident KV: past bound by pointer, new K/V scattered in place.

    ``feed`` holds the host inputs (ids, mask, positions) built for the call's rows. Returns the
    four head outputs on the host; the caches' token ids are advanced by the caller.
    """
    slab = shared_slab(slots)
    assert isinstance(slab, DeviceSlab), "device-resident caches always live in a slab"
    rows, row_of = call_rows(slots)
    lo = min(slot.job.cache.slot for slot in slots)
    _, kv_heads, head_dim = slabs.shape
    element = slabs.dtype.type
    binding = session.io_binding()
    for name in (io_names.INPUT_IDS, io_names.ATTENTION_MASK, io_names.POSITION_IDS):
        binding.bind_cpu_input(name, feed[name])
    past_shape = [rows, kv_heads, slab.capacity, head_dim]
    for j, name in enumerate(io_names.past_names(num_layers)):
        binding.bind_input(name, slabs.device, 0, element, past_shape, slab.pointer(j, lo))
    for name in io_names.HEAD_OUTPUTS:
        binding.bind_output(name, "cpu")
    for name in io_names.present_names(num_layers):
        binding.bind_output(name, slabs.device)
    session.run_with_iobinding(binding)
    outputs = binding.get_outputs()
    heads = [outputs[k].numpy() for k in range(len(io_names.HEAD_OUTPUTS))]
    new_kv = list(outputs[len(io_names.HEAD_OUTPUTS):])
    width = int(feed[io_names.INPUT_IDS].shape[1])
    # Every row of the call writes somewhere: real positions to their place, the rest to scratch.
    row_slots = list(range(lo, lo + rows))
    starts, counts = [0] * rows, [0] * rows
    for row, slot in zip(row_of, slots, strict=True):
        starts[row], counts[row] = len(slot.job.cache), slot.count
    slabs.scatter(slab, scatter_indices(row_slots, kv_heads, width, starts, counts, slab.capacity - 1), new_kv)
    return heads
