"""``guardstream``: the one command-line entry point.

Each command lives in ``workers/commands/<name>.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable ``(args) -> int``. Registration must stay
cheap: heavy imports (torch, onnxruntime) happen inside the command, so ``--help`` is instant
and the stream worker never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pipeline.config import ConfigError
from pipeline.errors import UserError

# Order is the order shown in --help.
COMMAND_MODULES = (
    "stack",      # up, down, topics
    "model",      # model init-random
    "export",
    "moderate",
    "eval",       # metrics on a labelled set
    "worker",     # worker stream|generative
    "send",
    "watch",
    "dlq",        # dlq list|show|republish
    "smoke",
    "demo",
    "gateway",    # OpenAI-compatible guarded endpoint
    "dashboard",  # live web view
    "bench",
    "config",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guardstream",
        description="Moderate streaming LLM chat token by token with Qwen3Guard, over Kafka.",
        epilog="Every flag also reads an environment variable (GUARD_<FLAG>); see 'guardstream config'.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"workers.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except (UserError, ConfigError) as exc:
        print(f"guardstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
