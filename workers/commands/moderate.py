"""`guardstream moderate`: final verdicts for complete conversations, offline.

``--engine torch`` (default) is the reference: one full-sequence forward per message
(:mod:`pipeline.reference`). ``--engine onnx`` feeds each message as ``--chunk-chars``-character
TokenDeltas through the streaming Scorer and the incremental ONNX engine (:mod:`pipeline.simulate`).
Both write one ``kind: final`` Verdict per user/assistant message, in conversation order.

Every verdict is stamped with the fixed ``--clock-ms`` (default 0) instead of the wall clock, so two
runs over the same input, with either engine and any chunking, give byte-identical files: that is
how engine parity is checked from the command line (``cmp``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import add_settings_arguments, settings_from_args

if TYPE_CHECKING:
    from schemas.messages import Verdict

SETTINGS = ("model", "device", "precision", "policy_file", "state_dir", "kv_cache_bytes", "max_batch_tokens",
            "max_context_tokens")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "moderate",
        help="Offline reference: one final verdict per user/assistant message of complete conversations",
        description="Judge complete conversations (JSONL) and write one final Verdict per user/assistant "
        "message (JSONL). The torch engine is the full-sequence reference; the onnx engine streams each "
        "message through the incremental pipeline. Both give identical output.",
    )
    add_settings_arguments(parser, SETTINGS)
    parser.add_argument("--input", required=True, type=Path, help="Conversations file (JSONL)")
    parser.add_argument("--output", required=True, type=Path, help="Verdicts file to write (JSONL)")
    parser.add_argument("--policy", choices=("strict", "loose"), default=None,
                        help="Policy for tenants not in --policy-file (default: GUARD_DEFAULT_POLICY or strict)")
    parser.add_argument("--tokens", action="store_true", help="Add token_labels: the risk of every scored token")
    parser.add_argument("--engine", choices=("torch", "onnx"), default="torch",
                        help="torch: full-sequence reference (default); onnx: incremental streaming engine")
    parser.add_argument("--chunk-chars", type=int, default=0, metavar="N",
                        help="onnx engine: feed messages as N-character deltas (0: each message whole)")
    parser.add_argument("--model-name", default=None,
                        help="The verdicts' model field (default: the --model folder name, or the hub id)")
    parser.add_argument("--clock-ms", type=int, default=0, metavar="MS",
                        help="Timestamp written into every verdict (fixed, so outputs compare byte for byte)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.conversations import read_conversations
    from pipeline.errors import UserError
    from pipeline.model.checkpoint import resolve_model_dir
    from pipeline.policy import load_policy_book
    from schemas.messages import encode

    settings = settings_from_args(args)
    if not settings.model:
        raise UserError("no model: pass --model DIR (a checkpoint or export directory, or a Hugging Face id)")
    if args.chunk_chars < 0:
        raise UserError(f"--chunk-chars must be 0 (whole messages) or positive, got {args.chunk_chars}")
    if args.clock_ms < 0:
        raise UserError(f"--clock-ms must be >= 0, got {args.clock_ms}")
    conversations = read_conversations(args.input)
    policies = load_policy_book(settings.policy_file or None, args.policy or settings.default_policy)
    folder = resolve_model_dir(settings.model)
    model_name = args.model_name or model_display_name(settings.model)

    console = Console(stderr=True)
    verdicts: list[Verdict] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"moderate ({args.engine})", total=len(conversations))
        if args.engine == "torch":
            from pipeline.onnx.layout import is_export_dir
            from pipeline.reference import ReferenceModerator

            if is_export_dir(folder):
                raise UserError(f"{settings.model} is an ONNX export; use --engine onnx (the torch engine needs "
                                "the checkpoint it was exported from)")

            moderator = ReferenceModerator.from_dir(
                folder, policies, model_name, device=settings.device, precision=settings.precision,
                include_token_labels=args.tokens, max_context_tokens=settings.max_context_tokens,
            )
            for conversation in conversations:
                verdicts += moderator.moderate(conversation, now_ms=args.clock_ms)
                bar.advance(task)
        else:
            from pipeline.onnx.loader import open_stream_engine
            from pipeline.simulate import Simulator, offline_finals

            engine = open_stream_engine(str(folder), settings)
            simulator = Simulator.from_dir(
                folder, engine, policies, model_name, include_token_labels=args.tokens,
                max_context_tokens=settings.max_context_tokens,
            )
            for conversation in conversations:
                result = simulator.simulate(conversation, chunk_chars=args.chunk_chars, now_ms=args.clock_ms)
                verdicts += offline_finals(result.verdicts)
                for rejection in result.rejections:
                    console.print(f"warning: conversation {conversation.conversation_id}: {rejection.reason}")
                bar.advance(task)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(b"".join(encode(v) + b"\n" for v in verdicts))
    console.print(f"{len(verdicts)} verdicts for {len(conversations)} conversations written to {args.output}")
    return 0


def model_display_name(model: str) -> str:
    """The ``model`` field of verdicts: a hub id as given, a local directory by its folder name."""
    path = Path(model).expanduser()
    return path.resolve().name if path.exists() else model
