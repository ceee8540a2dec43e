"""``guardstream bench engine``: incremental ORT engine vs the official re-run-the-prefix approach.

Prints a table, writes ``engine.json`` and ``engine.png`` into ``--out``. ``--size`` makes (once,
cached under the state dir) a random checkpoint of that size and its fp32 export; ``--model``
takes an export directory or a checkpoint instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from workers.bench.results import figure, save_figure

DEFAULT_OUT = Path("bench-results/engine")


def register(sub: Any) -> None:
    from pipeline.config import add_settings_arguments

    parser = sub.add_parser(
        "engine",
        help="Per-token cost vs context, tokens/s vs batch and chunk size, against the re-run-the-prefix baseline",
    )
    parser.add_argument("--model", default="", help="Export dir or checkpoint (default: a random --size model)")
    parser.add_argument("--size", choices=("tiny", "0.6b"), default="tiny",
                        help="Random model to make when --model is not given (default tiny, as bench gen; "
                             "0.6b is the real model's shape; --quick always uses tiny)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Result directory (default {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke run in seconds")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (default: chosen per device and "
                        "model size, see --engine-threads of the worker)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="Precision of the --size export (default fp32; fp16 is for the CUDA provider)")
    parser.add_argument("--contexts", default="", metavar="N,N,...",
                        help="Contexts of the per-token cost curve (default: the plan's; e.g. 256,8000)")
    parser.add_argument("--batch-sizes", default="", metavar="N,N,...",
                        help="Batch sizes of the throughput curve (default: the plan's)")
    parser.add_argument("--repeats", type=int, default=0, help="Timed repeats per case (default: the plan's)")
    parser.add_argument("--max-batch-context", type=int, default=0,
                        help="Bound on padded context per engine call (default 8192; raise it for GPU batches)")
    parser.add_argument("--kv-cache-gib", type=float, default=6.0, help="KV cache budget in GiB (default 6)")
    parser.add_argument("--processes", default="", metavar="N,N,...",
                        help="Instead of the curves: aggregate tokens/s of N engine processes on this machine "
                             "(each its own session, cores/N threads, a batch stepping one token at a time)")
    parser.add_argument("--process-batch", type=int, default=8, help="--processes: conversations per process")
    parser.add_argument("--process-seconds", type=float, default=10.0, help="--processes: timed seconds per N")
    parser.add_argument("--no-baseline", action="store_true",
                        help="Skip the re-run-the-prefix baseline (it dominates the run time at long contexts)")
    add_settings_arguments(parser, ["state_dir", "device", "max_batch_tokens", "engine_spin_wait"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.config import settings_from_args
    from pipeline.onnx.engine import OnnxStreamEngine
    from workers.bench.engine_cases import EngineBench

    settings = settings_from_args(args)
    console = Console(stderr=True)
    run_started = time.monotonic()

    def say(message: str) -> None:
        console.print(f"[dim]bench engine[/]: {message}")

    export_dir = _export_dir(args, settings, say)
    if args.processes:
        OnnxStreamEngine.from_dir(export_dir, device="cpu", warmup=False)  # a bad export fails here, once
        return _run_processes(args, settings, export_dir, say)
    say(f"loading {export_dir}")
    from pipeline.onnx.engine import DEFAULT_MAX_BATCH_CONTEXT

    engine = OnnxStreamEngine.from_dir(export_dir, device=settings.device,
                                       kv_cache_bytes=int(args.kv_cache_gib * 2**30),
                                       threads=args.threads or None, spin_wait=settings.engine_spin_wait,
                                       max_batch_tokens=settings.max_batch_tokens,
                                       max_batch_context=args.max_batch_context or DEFAULT_MAX_BATCH_CONTEXT)
    plan = _plan(args)
    started, load_before = time.monotonic(), os.getloadavg()
    result = EngineBench(engine, plan, say).run()
    report = {
        "command": "guardstream bench engine " + " ".join(_argv(args)),
        "machine": machine_description(engine.session.get_providers()),
        "intra_op_threads": engine.session.get_session_options().intra_op_num_threads,
        "spin_wait": settings.engine_spin_wait,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": {"name": engine.model_name, "precision": engine.info.precision,
                  "layers": engine.info.num_layers, "kv_bytes_per_token": engine.info.kv_bytes_per_token},
        # The whole command (model making and loading included) and the measuring alone.
        "seconds": round(time.monotonic() - run_started, 2),
        "bench_seconds": round(time.monotonic() - started, 2),
        # Other processes on the machine inflate timings; the 1-minute load average says how much.
        "load_average": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "plan": plan.__dict__,
        "results": result.as_dict(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, args.out / "engine.png")
    (args.out / "engine.md").write_text(render_markdown(report))
    Console().print(render_tables(report))
    say(f"wrote engine.json, engine.md and engine.png into {args.out}")
    return 0


def _run_processes(args: argparse.Namespace, settings: Any, export_dir: Path, say: Any) -> int:
    from rich.console import Console
    from rich.table import Table

    from workers.bench.engine_processes import measure

    counts = _sizes(args.processes, "--processes")
    context = _plan(args).batch_context
    say(f"processes {counts}: batch {args.process_batch} at context {context}, {args.process_seconds:g} s each")
    load_before = os.getloadavg()
    points = measure(export_dir, counts, args.process_batch, context, args.process_seconds, settings.device)
    from pipeline.onnx.layout import read_model_info

    report = {
        "command": "guardstream bench engine " + " ".join(_argv(args)),
        "machine": machine_description(["(per process)"]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": read_model_info(export_dir).as_dict()["model_name"],
        "batch": args.process_batch, "context": context, "seconds_per_level": args.process_seconds,
        "load_average": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "results": points,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine-processes.json").write_text(json.dumps(report, indent=2) + "\n")
    table = Table(title=f"Engine processes on one machine (batch {args.process_batch}, context {context})")
    for column in ("processes", "threads each", "tokens/s (all)", "tokens/s per process"):
        table.add_column(column, justify="right")
    lines = [f"Command: `{report['command']}`  ", f"Machine: {report['machine']}  ", "",
             "| processes | threads each | tokens/s (all) | tokens/s per process |", "|---:|---:|---:|---:|"]
    for p in points:
        row = (str(p["processes"]), str(p["threads_per_process"]), f"{p['tokens_per_s']:.1f}",
               f"{p['tokens_per_s_per_process']:.1f}")
        table.add_row(*row)
        lines.append("| " + " | ".join(row) + " |")
    (args.out / "engine-processes.md").write_text("\n".join(lines) + "\n")
    _plot_processes(report, args.out / "engine-processes.png")
    Console().print(table)
    say(f"wrote engine-processes.json, .md and .png into {args.out}")
    return 0


def _plot_processes(report: dict[str, Any], path: Path) -> None:
    points = report["results"]
    counts = [p["processes"] for p in points]
    fig, axis = figure(1, (6, 4))
    axis.plot(counts, [p["tokens_per_s"] for p in points], "o-", label="all processes")
    axis.plot(counts, [p["tokens_per_s_per_process"] for p in points], "s--", label="per process")
    axis.set(xlabel="engine processes on the machine", ylabel="tokens/s",
             title=f"batch {report['batch']} at context {report['context']}")
    axis.set_xticks(counts, [str(c) for c in counts])
    axis.legend()
    fig.suptitle(f"{report['model']} - {report['machine']}", fontsize=8)
    save_figure(fig, path, dpi=110)


def _sizes(text: str, flag: str) -> tuple[int, ...]:
    from pipeline.errors import UserError

    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise UserError(f"{flag} {text!r}: give positive integers separated by commas, e.g. {flag} 256,8000")
    return values


def _plan(args: argparse.Namespace) -> Any:
    import dataclasses

    from workers.bench.engine_cases import BenchPlan

    plan = BenchPlan.quick() if args.quick else BenchPlan.full()
    changes: dict[str, Any] = {}
    if args.contexts:
        changes["contexts"] = _sizes(args.contexts, "--contexts")
    if args.batch_sizes:
        changes["batch_sizes"] = _sizes(args.batch_sizes, "--batch-sizes")
    if args.repeats:
        changes["repeats"] = max(1, args.repeats)
    if args.no_baseline:
        changes["baseline_contexts"] = ()
    return dataclasses.replace(plan, **changes)


def _size(args: argparse.Namespace) -> str:
    """The size of random model a run without --model makes: --quick always runs tiny."""
    return "tiny" if args.quick else str(args.size)


def _argv(args: argparse.Namespace) -> list[str]:
    parts = [f"--model {args.model}"] if args.model else [f"--size {_size(args)}"]
    if args.quick:
        parts.append("--quick")
    if args.precision != "fp32" and not args.model:
        parts.append(f"--precision {args.precision}")
    for flag, value in (("--contexts", args.contexts), ("--batch-sizes", args.batch_sizes),
                        ("--repeats", args.repeats or "")):
        if value:
            parts.append(f"{flag} {value}")
    if args.no_baseline:
        parts.append("--no-baseline")
    if args.threads:
        parts.append(f"--threads {args.threads}")
    if args.engine_spin_wait:
        parts.append("--engine-spin-wait")
    if args.processes:
        parts.append(f"--processes {args.processes} --process-batch {args.process_batch} "
                     f"--process-seconds {args.process_seconds:g}")
    if args.max_batch_context:
        parts.append(f"--max-batch-context {args.max_batch_context}")
    if args.max_batch_tokens:
        parts.append(f"--max-batch-tokens {args.max_batch_tokens}")
    if args.device:
        parts.append(f"--device {args.device}")
    return parts


def _export_dir(args: argparse.Namespace, settings: Any, say: Any) -> Path:
    from pipeline.errors import UserError
    from pipeline.onnx.layout import KV_LAYOUT, has_current_layout, is_export_dir

    if args.model:
        folder = Path(args.model)
        if is_export_dir(folder):
            return folder
        if not folder.exists():
            raise UserError(f"--model {folder} does not exist; pass an export dir, a checkpoint dir, or use --size")
    size = _size(args)
    root = Path(settings.state_dir) / "bench-models"
    export_dir = root / f"{size}-onnx-{args.precision}-{KV_LAYOUT}"
    if has_current_layout(export_dir):
        return export_dir
    try:
        from pipeline.model.checkpoint import init_random_stream
        from pipeline.onnx.export import export_stream_model
    except ImportError as exc:
        raise UserError(f"making a benchmark model needs torch (pip install 'guardstream[torch]'): {exc}") from exc
    checkpoint = Path(args.model) if args.model else root / f"{size}-checkpoint"
    if not args.model and not (checkpoint / "config.json").is_file():
        say(f"making a random {size} checkpoint in {checkpoint}")
        init_random_stream(checkpoint, size, seed=0)
    return export_stream_model(str(checkpoint), export_dir, precision=args.precision, progress=say)


def machine_description(providers: list[str]) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from pipeline.onnx.session import usable_cores

    return f"{cpu}, {usable_cores()} usable cores, providers {','.join(providers)}"


def render_tables(report: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table

    results = report["results"]
    contexts = Table(title=f"Per-token cost vs context ({report['model']['name']}, {report['model']['precision']})")
    for column in ("context", "KV read MiB", "1 token ms", "16-chunk ms/token", "re-run prefix ms/token",
                   "speedup"):
        contexts.add_column(column, justify="right")
    for p in results["contexts"]:
        contexts.add_row(str(p["context"]), f"{p['kv_mib']:.1f}", f"{p['one_token_ms']:.2f}",
                         f"{p['chunk16_ms_per_token']:.2f}", _maybe(p["baseline_ms_per_token"], "{:.2f}"),
                         _maybe(p["speedup"], "{:.1f}x"))
    throughput = Table(title=f"Throughput at context {report['plan']['batch_context']}")
    for column in ("case", "size", "tokens/s", "ms per call"):
        throughput.add_column(column, justify="right")
    for kind in ("batches", "chunks"):
        for p in results[kind]:
            throughput.add_row("batch (1 token each)" if kind == "batches" else "chunk (batch 1)", str(p["size"]),
                               f"{p['tokens_per_s']:.1f}", f"{p['ms_per_call']:.2f}")
    return Group(contexts, throughput)


def render_markdown(report: dict[str, Any]) -> str:
    """The same tables as Markdown, for docs/benchmarks.md."""
    results = report["results"]
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Date: {report['date']}; model {report['model']['name']} ({report['model']['precision']}), "
        f"run took {report['seconds']} s ({report.get('bench_seconds', '-')} s measuring); "
        f"1-min load average {report['load_average']['before']} before, "
        f"{report['load_average']['after']} after (timings are the fastest of the repeats).",
        "",
        "| context | KV read (MiB) | 1 new token (ms) | 16-token chunk (ms/token) | re-run prefix, official (ms/token) "
        "| speedup |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for p in results["contexts"]:
        lines.append(f"| {p['context']} | {p['kv_mib']:.0f} | {p['one_token_ms']:.1f} | "
                     f"{p['chunk16_ms_per_token']:.1f} | {_maybe(p['baseline_ms_per_token'], '{:.0f}')} | "
                     f"{_maybe(p['speedup'], '{:.1f}x')} |")
    lines += ["", f"Throughput at context {report['plan']['batch_context']}:", "",
              "| case | size | tokens/s | ms per call |", "|---|---:|---:|---:|"]
    for kind, label in (("batches", "batch, 1 token each"), ("chunks", "chunk, batch 1")):
        for p in results[kind]:
            lines.append(f"| {label} | {p['size']} | {p['tokens_per_s']:.1f} | {p['ms_per_call']:.1f} |")
    return "\n".join(lines) + "\n"


def _maybe(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib.ticker

    results = report["results"]
    fig, (left, right) = figure(2, (11, 4.2))
    xs = [p["context"] for p in results["contexts"]]
    left.plot(xs, [p["one_token_ms"] for p in results["contexts"]], "o-", label="cached, 1 token")
    left.plot(xs, [p["chunk16_ms_per_token"] for p in results["contexts"]], "s-", label="cached, 16-token chunk")
    base = [(p["context"], p["baseline_ms_per_token"]) for p in results["contexts"] if p["baseline_ms_per_token"]]
    if base:
        left.plot(*zip(*base, strict=True), "x--", label="re-run prefix (official)")
    left.set(xscale="log", yscale="log", xlabel="context tokens", ylabel="ms per new token",
             title="Per-token cost vs context")
    left.set_xticks(xs, [str(x) for x in xs], minor=False)
    left.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    left.legend()
    for kind, label in (("batches", "batch size (1 token each)"), ("chunks", "chunk size (batch 1)")):
        right.plot([p["size"] for p in results[kind]], [p["tokens_per_s"] for p in results[kind]], "o-", label=label)
    right.set(xscale="log", xlabel="size", ylabel="tokens/s",
              title=f"Throughput at context {report['plan']['batch_context']}")
    sizes = sorted({p["size"] for kind in ("batches", "chunks") for p in results[kind]})
    right.set_xticks(sizes, [str(x) for x in sizes], minor=False)
    right.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    right.legend()
    fig.suptitle(f"{report['model']['name']} {report['model']['precision']} - {report['machine']}", fontsize=8)
    save_figure(fig, path, dpi=110)
