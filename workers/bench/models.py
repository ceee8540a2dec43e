"""The model a ``guardstream bench`` command runs: the one given with ``--model``, else a random tiny
checkpoint's fp32 ONNX export, made once under the state dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Settings

TINY_MODEL_LABEL = "random tiny checkpoint (ONNX fp32)"


def bench_model(model: str, settings: Settings) -> tuple[str, str]:
    """(folder with config.json and tokenizer, label) of ``model``, or of the tiny export when it is empty."""
    if model:
        return model, model
    return str(tiny_export_dir(settings)), TINY_MODEL_LABEL


def open_bench_engine(model: str, settings: Settings) -> tuple[Any, str, str]:
    """(engine, folder with config.json and tokenizer, label); see ``bench_model``."""
    from pipeline.onnx.loader import open_stream_engine

    path, label = bench_model(model, settings)
    return open_stream_engine(path, settings), path, label


def tiny_export_dir(settings: Settings) -> Path:
    """The random tiny checkpoint's fp32 export, made once under the state dir."""
    from pipeline.onnx.layout import KV_LAYOUT, has_current_layout

    # The layout in the name: an export made for an older engine is left alone, a new one is made.
    folder = Path(settings.state_dir) / "bench" / f"tiny-random-onnx-{KV_LAYOUT}"
    if not has_current_layout(folder):
        from pipeline.model.checkpoint import init_random_stream
        from pipeline.onnx.export import export_stream_model

        checkpoint = init_random_stream(Path(settings.state_dir) / "bench" / "tiny-random", "tiny", seed=0)
        export_stream_model(str(checkpoint), folder)
    return folder
