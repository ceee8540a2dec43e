"""`guardstream export`: a checkpoint -> a self-contained, validated ONNX directory for the stream worker."""

from __future__ import annotations

import argparse
import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "fp16")
# What torch's ONNX exporter says on every export of this model, none of it actionable:
# - dynamic axes that share one shape constraint (batch, seq, past are meant to be shared);
# - torchvision's operators skipped because torchvision is not installed (the model uses none).
SHARED_AXIS_WARNING = r"# The axis name: \w+ will not be used, since it shares the same shape constraints"
REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


@contextlib.contextmanager
def quiet_torch_export() -> Iterator[None]:
    """Silence exactly the exporter's known, harmless lines; any other warning still shows."""
    registration = logging.getLogger(REGISTRATION_LOGGER)
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=SHARED_AXIS_WARNING, category=UserWarning)
            yield
    finally:
        registration.setLevel(level)


def register(sub: Any) -> None:
    from pipeline.config import add_settings_arguments

    parser = sub.add_parser(
        "export",
        help="Export a Qwen3Guard-Stream checkpoint to ONNX (KV-cache inputs/outputs), validated",
        description="Write model.onnx (+ external data), config, label maps, tokenizer and metadata into "
        "--out, after checking the graph and comparing it with the torch model on a short input. "
        "fp32 is for CPU; fp16 is for the CUDA provider.",
    )
    add_settings_arguments(parser, ["model"])
    parser.add_argument("--out", required=True, type=Path, help="Directory to write (must be new or empty)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (CPU) or fp16 (GPU); default fp32")
    parser.add_argument("--opset", type=int, default=23, help="ONNX opset (>= 23; default 23)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.config import settings_from_args
    from pipeline.errors import UserError

    settings = settings_from_args(args)
    if not settings.model:
        raise UserError("no model given: pass --model CHECKPOINT_DIR (or a Hugging Face id) or set GUARD_MODEL")
    console = Console(stderr=True)
    try:
        from pipeline.onnx.export import export_stream_model
    except ImportError as exc:
        raise UserError(f"export needs torch, transformers and onnx: pip install 'guardstream[torch]' ({exc})") \
            from exc
    with quiet_torch_export():
        out = export_stream_model(settings.model, args.out, precision=args.precision, opset=args.opset,
                                  progress=lambda message: console.print(f"[bold]export[/]: {message}"))
    console.print(f"done: load it with --model {out}")
    return 0
