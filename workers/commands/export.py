"""`guardstream export`: a checkpoint -> a self-contained, validated ONNX directory for the stream worker."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "fp16")


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
    out = export_stream_model(settings.model, args.out, precision=args.precision, opset=args.opset,
                              progress=lambda message: console.print(f"[bold]export[/]: {message}"))
    console.print(f"done: load it with --model {out}")
    return 0
