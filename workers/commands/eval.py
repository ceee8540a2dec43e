"""``guardstream eval``: the Qwen3Guard report's metrics on a labelled set (docs/eval.md).

Prints a table, writes ``eval.json`` and ``eval.png`` under ``--out``. ``--engine torch`` without
chunking is the offline reference; ``--engine onnx`` (or any chunking) streams each sample through
the stream Scorer as TokenDeltas. The numbers do not depend on the chunking.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipeline.config import add_settings_arguments, settings_from_args

SETTINGS = ("model", "device", "precision", "policy_file", "kv_cache_bytes", "max_batch_tokens", "max_context_tokens",
            "kafka_bootstrap", "topic_in", "topic_verdicts")
DEFAULT_OUT = Path("eval-results")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "eval",
        help="Score a checkpoint on a labelled set: precision/recall/unsafe-F1 and detection timing",
        description="Evaluate a Stream checkpoint on labelled JSONL (Qwen3GuardTest field layout or the "
        "conversations format with 'label'): classification precision, recall and unsafe-F1 under the strict "
        "and loose policies, and detection timing against annotated unsafe sentences. Prints a table and "
        "writes eval.json and eval.png. Random-weight checkpoints give meaningless numbers.",
    )
    add_settings_arguments(parser, SETTINGS)
    parser.add_argument("--data", required=True, type=Path, help="Labelled samples (JSONL; see docs/eval.md)")
    parser.add_argument("--split", choices=("auto", "classify", "loc"), default="auto",
                        help="classify: ignore loc indices; loc: require them on every sample; auto (default): "
                        "time the samples that carry them")
    parser.add_argument("--engine", choices=("torch", "onnx"), default="torch",
                        help="torch: full-sequence reference (default); onnx: the incremental streaming engine")
    chunking = parser.add_mutually_exclusive_group()
    chunking.add_argument("--chunk-chars", type=int, default=None, metavar="N",
                          help="Stream each message as N-character deltas through the stream scorer")
    chunking.add_argument("--chunk-tokens", type=int, default=None, metavar="N",
                          help="Stream each message as N-token deltas through the stream scorer")
    parser.add_argument("--policy", choices=("strict", "loose"), default="strict",
                        help="Headline policy: table order, detection mode and sweep target (both are reported)")
    parser.add_argument("--tenant", default=None,
                        help="Evaluate this tenant's rule from --policy-file (thresholds, debounce)")
    parser.add_argument("--unsafe-threshold", type=float, default=None, metavar="P",
                        help="Token is unsafe when P(unsafe) >= P (default: the argmax rule)")
    parser.add_argument("--risky-threshold", type=float, default=None, metavar="P",
                        help="Otherwise controversial when P(unsafe)+P(controversial) >= P (default: argmax)")
    parser.add_argument("--debounce-tokens", type=int, default=None, metavar="N",
                        help="Consecutive tokens of one level that decide a response (default 2, the official rule)")
    parser.add_argument("--sweep", nargs="?", const="auto", choices=("auto", "unsafe", "risky"), default=None,
                        help="Also relabel with each threshold 0.05..0.95 and plot precision/recall/timing against "
                        "it (auto: risky under strict, unsafe under loose)")
    parser.add_argument("--through-kafka", action="store_true",
                        help="Send the set as deltas to the input topic and read the verdicts of a running stream "
                        "worker (its own model and policy file); adds verdict latency")
    parser.add_argument("--rate", type=float, default=0.0, metavar="DELTAS_PER_S",
                        help="--through-kafka: pace the deltas (0: as fast as possible; latency then includes backlog)")
    parser.add_argument("--kafka-timeout", type=float, default=300.0, metavar="S",
                        help="--through-kafka: give up when verdicts stop arriving for this long in total")
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="Only the first N samples (0: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Result directory (default {DEFAULT_OUT})")
    parser.add_argument("--model-name", default=None, help="Name shown in the report (default: the folder name)")
    parser.set_defaults(func=run)


def _rule(args: argparse.Namespace, settings: Any) -> Any:
    from pipeline.errors import UserError
    from pipeline.policy import load_policy_book, parse_rule

    book = load_policy_book(settings.policy_file or None, args.policy)
    if args.tenant is not None and args.tenant not in book.tenants:
        raise UserError(f"tenant {args.tenant!r} is not in the policy file {settings.policy_file or '(none)'}; "
                        "pass --policy-file with a tenants entry for it, or drop --tenant")
    base = book.for_tenant(args.tenant).rule
    raw = {"unsafe_threshold": base.unsafe_threshold, "risky_threshold": base.risky_threshold,
           "debounce_tokens": base.debounce_tokens}
    for key in raw:
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    return parse_rule("eval flags", raw)


def _chunker(args: argparse.Namespace, text: Any) -> tuple[Any, str]:
    from pipeline.chunking import Chunker

    if args.chunk_tokens is not None:
        return Chunker("tokens", args.chunk_tokens, tokenizer=text.template), f"{args.chunk_tokens} tokens"
    size = args.chunk_chars if args.chunk_chars is not None else 1 << 30
    return Chunker("chars", size), f"{args.chunk_chars} chars" if args.chunk_chars else "whole messages"


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.errors import UserError
    from pipeline.eval.dataset import read_samples
    from pipeline.eval.report import metrics, plot, print_tables, sweep, whole_string_agrees
    from pipeline.eval.sweep import SweptThreshold, default_grid
    from pipeline.labels import read_label_maps
    from pipeline.model.checkpoint import resolve_model_dir
    from pipeline.policy import PolicyBook, TenantPolicy
    from pipeline.tokens.files import load_model_tokenizer
    from pipeline.tokens.text import TextTokenizer
    from workers.commands.moderate import model_display_name

    settings = settings_from_args(args)
    if not settings.model:
        raise UserError("no model: pass --model DIR (a checkpoint or export directory, or a Hugging Face id)")
    for flag in ("chunk_chars", "chunk_tokens", "limit"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "limit" else 1):
            raise UserError(f"--{flag.replace('_', '-')} must be {'>= 0' if flag == 'limit' else '>= 1'}, got {value}")
    rule = _rule(args, settings)
    if args.through_kafka and args.sweep:
        raise UserError("--sweep needs the per-token probabilities, which verdicts do not carry: "
                        "run the sweep without --through-kafka")
    samples = read_samples(args.data, args.split)
    if args.limit:
        samples = samples[: args.limit]
    folder = resolve_model_dir(settings.model)
    model_name = args.model_name or model_display_name(settings.model)
    text = TextTokenizer.of(load_model_tokenizer(folder))
    labels = read_label_maps(folder)
    chunked = args.chunk_chars is not None or args.chunk_tokens is not None
    console = Console(stderr=True)

    runner: Any = None
    latency = None
    if args.through_kafka:
        engine_desc = (f"live stream worker via {settings.topic_in} -> {settings.topic_verdicts}, deltas of "
                       + (f"{args.chunk_tokens} tokens" if args.chunk_tokens else
                          f"{args.chunk_chars} chars" if args.chunk_chars else "whole messages"))
    elif args.engine == "torch" and not chunked:
        from pipeline.eval.runs import OfflineRunner
        from pipeline.model.checkpoint import load_stream_model

        model, _ = load_stream_model(str(folder), dtype=settings.precision, device=settings.device)
        runner = OfflineRunner(model, text, labels, rule, settings.max_context_tokens)
        engine_desc = "torch reference (full forward)"
    else:
        from pipeline.eval.runs import SimulatedStreamRunner
        from pipeline.scoring.scorer import Scorer

        if args.engine == "torch":
            from pipeline.model.checkpoint import load_stream_model
            from pipeline.reference import ReferenceEngine

            model, _ = load_stream_model(str(folder), dtype=settings.precision, device=settings.device)
            engine: Any = ReferenceEngine(model, model_name)
        else:
            from pipeline.onnx.loader import open_stream_engine

            engine = open_stream_engine(str(folder), settings)
        chunker, unit = _chunker(args, text)
        policies = PolicyBook(default=TenantPolicy(mode=args.policy, rule=rule))
        scorer = Scorer(text, labels, policies, model_name, progress_every_tokens=0,
                        max_context_tokens=settings.max_context_tokens)
        runner = SimulatedStreamRunner(scorer, engine, chunker, labels, settings.max_context_tokens)
        engine_desc = f"{args.engine} stream scorer, deltas of {unit}"

    runs = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("eval (kafka)" if args.through_kafka else f"eval ({args.engine})", total=len(samples))
        if args.through_kafka:
            from pipeline.eval.kafka import run_through_kafka

            result = run_through_kafka(settings, samples, text, _chunker(args, text)[0], args.tenant, rate=args.rate,
                                       timeout_s=args.kafka_timeout, advance=lambda: bar.advance(task))
            runs, latency = result.runs, result.latency
        else:
            for sample in samples:
                runs.append(runner.run(sample))
                bar.advance(task)

    timed = [r for r in runs if r.judged and r.sample.timed]
    report: dict[str, Any] = {
        "model": model_name, "data": str(args.data), "engine": engine_desc, "policy": args.policy,
        "rule": {"unsafe_threshold": rule.unsafe_threshold, "risky_threshold": rule.risky_threshold,
                 "debounce_tokens": rule.debounce_tokens},
        "metrics": metrics(runs),
        "latency": latency,
        "index_check": {"timed": len(timed),
                        "whole_string_differs": sum(1 for r in timed if not whole_string_agrees(text, r.context_ids))},
        "samples": [{"id": r.sample.sample_id, "label": r.sample.label, "role": r.sample.role,
                     "risk": r.outcome.risk, "first_unsafe": r.outcome.first_unsafe,
                     "first_controversial": r.outcome.first_controversial, "judged": r.judged} for r in runs],
    }
    if args.sweep:
        which: SweptThreshold = args.sweep if args.sweep != "auto" else (
            "risky" if args.policy == "strict" else "unsafe")
        report["sweep"] = {"threshold": which, "points": sweep(runs, rule, which, default_grid(), args.policy)}
    print_tables(report, console)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot(report, args.out / "eval.png")
    console.print(f"wrote {args.out / 'eval.json'} and {args.out / 'eval.png'}")
    return 0
