"""Open the engine for a model argument: an export directory, or a checkpoint exported once.

Kept apart from the engine (which never needs torch or the exporter) and from the exporter (whose
parity check drives the engine), so neither imports the other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.onnx.engine import OnnxStreamEngine
from pipeline.onnx.layout import KV_LAYOUT, has_current_layout, is_export_dir
from pipeline.onnx.session import choose_providers


def open_stream_engine(model: str, settings: Any) -> OnnxStreamEngine:
    """An engine for ``model``: an export directory, or a checkpoint exported once into a cache dir.

    ``settings`` is ``pipeline.config.Settings`` (device, precision, state_dir, kv_cache_bytes,
    max_batch_tokens, engine_threads, engine_spin_wait). Exporting needs the torch extra; loading an export does not.
    """
    def load(folder: Path) -> OnnxStreamEngine:
        return OnnxStreamEngine.from_dir(folder, device=settings.device, kv_cache_bytes=settings.kv_cache_bytes,
                                         max_batch_tokens=settings.max_batch_tokens,
                                         threads=int(settings.engine_threads) or None,
                                         spin_wait=bool(settings.engine_spin_wait))

    folder = Path(model)
    if is_export_dir(folder):
        return load(folder)
    precision = _export_precision(settings.precision, settings.device)
    cached = Path(settings.state_dir) / "onnx-cache" / _cache_key(model, precision)
    if not has_current_layout(cached):
        try:
            from pipeline.onnx.export import export_stream_model
        except ImportError as exc:
            raise UserError(f"{model} is a checkpoint, and exporting it needs torch (pip install "
                            "'guardstream[torch]'); or pass a directory made by `guardstream export`") from exc
        try:
            export_stream_model(model, cached, precision=precision)
        except UserError:
            if not has_current_layout(cached):  # another worker may have finished the same export first
                raise
    return load(cached)


def _export_precision(precision: str, device: str) -> str:
    if precision == "fp32":
        return "fp32"
    if precision in ("fp16", "bf16"):
        return "fp16"  # ORT's bf16 coverage is thin: half precision exports as fp16
    on_gpu = "CUDAExecutionProvider" in choose_providers(device)
    return "fp16" if on_gpu else "fp32"


def _cache_key(model: str, precision: str) -> str:
    """Identity of a checkpoint export: path, file sizes and mtimes (not contents: GBs to hash)."""
    digest = hashlib.sha256(f"{model}|{precision}|{KV_LAYOUT}".encode())
    folder = Path(model)
    if folder.is_dir():
        digest.update(str(folder.resolve()).encode())
        for path in sorted(folder.iterdir()):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
