"""`guardstream model init-random`: write a checkpoint in the official layout with random weights.

Every test and demo needs a model and no machine here reaches the hub, so the project makes its
own: the real architecture and the real Qwen3 tokenizer, random weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SIZES = ("tiny", "0.6b", "4b", "8b")


def register(sub: Any) -> None:
    parser = sub.add_parser("model", help="Make model checkpoints (random weights, official layout)")
    actions = parser.add_subparsers(dest="model_action", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init-random",
        help="Write a Qwen3Guard checkpoint with random weights and the real Qwen3 tokenizer",
        description="Write config.json, safetensors weights and tokenizer files of a randomly initialised "
        "Qwen3Guard-Stream (--arch stream) or Qwen3Guard-Gen (--arch gen) checkpoint.",
    )
    init.add_argument("--arch", choices=("stream", "gen"), default="stream",
                      help="Which Qwen3Guard variant (default: stream)")
    init.add_argument("--size", choices=SIZES, default="tiny",
                      help="tiny (test size, real vocabulary) or a released size (default tiny)")
    init.add_argument("--seed", type=int, default=0, help="Random seed; the same seed gives the same weights")
    init.add_argument("--out", required=True, type=Path, help="Directory to write (created if missing)")
    init.add_argument("--safe-prior", type=float, default=0.0, metavar="LOGITS",
                      help="Stream only: bias both risk heads toward Safe by about LOGITS (e.g. 4), so that most "
                      "text is judged Safe and a little is not, as a deployed model would judge it; the verdicts "
                      "stay random (default 0: no prior, each risk level equally likely)")
    init.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.errors import UserError

    out: Path = args.out
    if args.safe_prior and args.arch != "stream":
        raise UserError("--safe-prior applies to --arch stream only; drop it for --arch gen")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise UserError(f"--out {out} is a non-empty directory that is not a checkpoint; pass an empty or new one")
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"{args.arch} {args.size}: tensors", total=None)

        def progress(name: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"{args.arch} {args.size}: {name}")

        if args.arch == "stream":
            from pipeline.model.checkpoint import init_random_stream

            init_random_stream(out, args.size, args.seed, safe_prior=args.safe_prior, progress=progress)
        else:
            from pipeline.gen.checkpoint import init_random_gen

            init_random_gen(out, args.size, args.seed)
    prior = f", Safe prior {args.safe_prior:g}" if args.safe_prior else ""
    console.print(f"wrote a random {args.arch} {args.size} checkpoint (seed {args.seed}{prior}) to {out}")
    return 0
