"""onnxruntime session creation: provider choice and thread settings."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from pipeline.errors import UserError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


def choose_providers(device: str) -> list[str]:
    """CUDA first when asked for (or available under auto), CPU always as the fallback."""
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cuda":
        if CUDA not in available:
            raise UserError("device cuda asked for, but this onnxruntime has no CUDAExecutionProvider: "
                            "install onnxruntime-gpu (without the CPU package) or use --device cpu")
        return [CUDA, CPU]
    if device == "auto" and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages (onnxruntime-gpu's cuda/cudnn extras) if present.

    Without it a machine that got CUDA only from pip (no system CUDA) fails to create the CUDA
    provider; with system libraries this finds them as before. Failures leave the normal search.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception:  # best effort: the provider's own error is clearer if it still fails
        return


# Below this KV width (kv heads x head dim per layer) a model's ops are too small for a second
# intra-op thread to pay for waking it: one thread does the whole call (docs/benchmarks.md, "Engine"
# and "Stream worker: host work per delta").
PARALLEL_KV_WIDTH = 256


def intra_op_threads(requested: int | None, providers: list[str], kv_width: int | None = None) -> int:
    """Threads of the session's intra-op pool: ``requested`` when given, else chosen per device and model size.

    On CUDA the GPU computes and host threads would only wait; a small model on the CPU is faster on
    one thread than on a pool that has to be woken for every op; a larger one gets every usable core.
    """
    if requested:
        return max(1, requested)
    if CUDA in providers[:1]:
        return 1
    if kv_width is not None and kv_width < PARALLEL_KV_WIDTH:
        return 1
    return usable_cores()


def session_options(threads: int, spin_wait: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # One model call at a time per engine: the pool works on that call's ops, no inter-op pool.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning pool threads keep a core busy between ops and between calls (the worker's loop does
    # Kafka, Redis and Python work between calls): on a shared host that is CPU taken from the loop.
    spin = "1" if spin_wait else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def open_session(model_path: Path, providers: list[str], threads: int | None = None, *,
                 kv_width: int | None = None, spin_wait: bool = False) -> ort.InferenceSession:
    """An ORT session; ``threads`` None/0 chooses per device and model size (``intra_op_threads``)."""
    options = session_options(intra_op_threads(threads, providers, kv_width), spin_wait)
    if CUDA in providers:
        preload_cuda_libraries()
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types; the path is what the user can fix
        raise UserError(f"onnxruntime could not load {model_path}: {exc}") from exc
