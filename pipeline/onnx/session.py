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


def open_session(model_path: Path, providers: list[str], threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One model call at a time per engine: all cores go to intra-op parallelism of that call.
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if CUDA in providers:
        preload_cuda_libraries()
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types; the path is what the user can fix
        raise UserError(f"onnxruntime could not load {model_path}: {exc}") from exc
