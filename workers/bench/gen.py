"""``guardstream bench gen``: Gen rulings/s and latency vs batch size, with the unbatched baseline.

The baseline, measured in the same run on the same requests, is what the official usage does:
one request at a time through transformers' ``generate`` (greedy, unconstrained), run for the
same number of new tokens as our constrained ruling of that request (a random checkpoint never
stops on its own, so an unconstrained decode would otherwise always run to 128 tokens). Then our
constrained decoder at batch sizes 1, 2, 4, ...: rulings/s and the latency of a ruling (its
batch's wall time). Prints a table, writes ``gen.json``, ``gen.md`` and ``gen.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from workers.bench.results import figure, save_figure

DEFAULT_OUT = Path("bench-results/gen")


def register(sub: Any) -> None:
    from pipeline.config import add_settings_arguments

    parser = sub.add_parser("gen", help="Gen rulings/s and latency vs batch size, against one-at-a-time generate")
    parser.add_argument("--model", default="", help="Gen checkpoint dir or hub id (default: a random --size model)")
    parser.add_argument("--size", choices=("tiny", "0.6b"), default="tiny",
                        help="Random model to make when --model is not given (default tiny)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Result directory (default {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="Few requests and batch sizes: a smoke run")
    parser.add_argument("--requests", type=int, default=0, help="Requests per measurement (default 32, quick 8)")
    parser.add_argument("--drafts", action="store_true",
                        help="Instead: the worker's draft work per delta (append records) against the whole-draft "
                             "rewrite, for one message of 1k-100k 3-character deltas; no model")
    parser.add_argument("--live", type=int, default=0, metavar="N",
                        help="With --drafts: also stream one message of N deltas through a generative worker "
                             "process on the local stack and time it to its ruling")
    parser.add_argument("--worker-pythonpath", default="",
                        help="With --live: run the worker from this source tree (e.g. a checkout of an earlier "
                             "version, for a before/after comparison); default: this one")
    add_settings_arguments(parser, ["kafka_bootstrap"])
    add_settings_arguments(parser, ["state_dir", "device", "precision", "gen_threads"])
    parser.set_defaults(func=run)


def _requests(count: int) -> list[Any]:
    from pipeline.gen.render import prompt_request, response_request

    topics = ["baking bread", "fixing a bike", "tax forms", "a chemistry exam", "a job interview", "a trip to Rome"]
    out = []
    for i in range(count):
        topic = topics[i % len(topics)]
        question = f"Question {i}: can you give me detailed advice about {topic}? " * (1 + i % 3)
        if i % 2:
            out.append(response_request(question, f"Sure. Here is what I know about {topic}. " * (2 + i % 4)))
        else:
            out.append(prompt_request(question))
    return out


def _checkpoint(args: argparse.Namespace, state_dir: Path, say: Any) -> str:
    from pipeline.gen.checkpoint import init_random_gen

    if args.model:
        return str(args.model)
    folder = state_dir / "bench-models" / f"gen-{args.size}"
    if not (folder / "config.json").is_file():
        say(f"making a random {args.size} Gen checkpoint in {folder}")
        init_random_gen(folder, size=args.size, seed=0)
    return str(folder)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from pipeline.config import settings_from_args, state_path
    from pipeline.gen.checkpoint import load_gen_model
    from pipeline.gen.moderator import GenModerator
    from pipeline.gen.render import render_ids

    settings = settings_from_args(args)
    console = Console(stderr=True)

    def say(message: str) -> None:
        console.print(f"[dim]bench gen[/]: {message}")

    if args.drafts:
        from workers.bench.gen_drafts import LiveRun, run_drafts

        command = "guardstream bench gen --drafts" + (" --quick" if args.quick else "")
        if args.live:
            command += f" --live {args.live}" + (f" --worker-pythonpath {args.worker_pythonpath}"
                                                 if args.worker_pythonpath else "")
        live = None
        if args.live:
            live = LiveRun(settings, _checkpoint(args, state_path(settings), say), args.live, args.worker_pythonpath,
                           say)
        run_drafts(args.out, args.quick, command, live)
        return 0

    if settings.gen_threads > 0:
        torch.set_num_threads(settings.gen_threads)
    model_dir = _checkpoint(args, state_path(settings), say)
    gen = load_gen_model(model_dir, device=settings.device, dtype=settings.precision)
    moderator = GenModerator(gen, context_tokens=settings.max_context_tokens)
    count = args.requests or (8 if args.quick else 32)
    batch_sizes = [1, 2, 4, 8] if args.quick else [1, 2, 4, 8, 16, 32]
    requests = _requests(count)
    started_all, load_before = time.monotonic(), os.getloadavg()
    say("warm-up")
    reference = moderator.rule(requests)   # also the token counts the baseline decodes

    say(f"baseline: {count} requests one at a time through generate()")
    baseline_latencies = []
    for request, ruling in zip(requests, reference, strict=True):
        ids = render_ids(gen.tokenizer, request.turns)
        new_tokens = len(gen.tokenizer(ruling.text, add_special_tokens=False)["input_ids"]) + 1
        tensor = torch.tensor([ids], device=gen.device)
        start = time.perf_counter()
        with torch.inference_mode():
            gen.model.generate(tensor, attention_mask=torch.ones_like(tensor), do_sample=False,
                               max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=gen.pad_token_id)
        baseline_latencies.append(time.perf_counter() - start)
    rows = [_row("baseline: generate, one at a time", 1, baseline_latencies, [1] * count)]

    for size in batch_sizes:
        if size > count:
            break
        say(f"constrained decode, batch {size}")
        latencies, sizes = [], []
        for offset in range(0, count, size):
            batch = requests[offset:offset + size]
            start = time.perf_counter()
            results = moderator.rule(batch)
            elapsed = time.perf_counter() - start
            latencies += [elapsed] * len(results)
            sizes += [len(results)]
        rows.append(_row("constrained, batched", size, latencies, sizes))

    source = f" --model {args.model}" if args.model else f" --size {args.size}"
    report = {
        "command": "guardstream bench gen" + (" --quick" if args.quick else "") + source,
        "machine": _machine(gen.device),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": {"name": gen.name, "device": gen.device, "dtype": str(next(gen.model.parameters()).dtype)},
        "torch_threads": torch.get_num_threads(),
        "requests": count,
        "seconds": round(time.monotonic() - started_all, 1),
        # Other processes on the machine inflate timings; the 1-minute load average says how much.
        "load_average": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gen.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gen.md").write_text(render_markdown(report))
    _plot(report, args.out / "gen.png")
    Console().print(render_markdown(report))
    say(f"wrote gen.json, gen.md and gen.png into {args.out}")
    return 0


def _row(method: str, batch: int, latencies: list[float], batches: list[int]) -> dict[str, Any]:
    total = sum(latencies[i] for i in _first_of_each_batch(batches))
    ordered = sorted(latencies)
    return {
        "method": method,
        "batch": batch,
        "rulings_per_s": round(len(latencies) / total, 2) if total else None,
        "latency_p50_ms": round(statistics.median(ordered) * 1000, 1),
        "latency_p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
    }


def _first_of_each_batch(batches: list[int]) -> list[int]:
    # latencies repeat a batch's wall time per ruling; the run's time is each batch counted once.
    indexes, position = [], 0
    for size in batches:
        indexes.append(position)
        position += size
    return indexes


def _machine(device: str) -> str:
    import torch

    where = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
    return f"{platform.system()} {platform.machine()}, {where}, torch {torch.__version__}"


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"`{report['command']}` on {report['machine']}, {report['date']}; model {report['model']['name']} "
        f"({report['model']['dtype']}), {report['torch_threads']} torch threads, {report['requests']} requests, "
        "load average "
        f"{report['load_average']['before']} -> {report['load_average']['after']}",
        "",
        "| method | batch | rulings/s | latency p50 (ms) | latency p95 (ms) |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['method']} | {row['batch']} | {row['rulings_per_s']} | {row['latency_p50_ms']} | "
                     f"{row['latency_p95_ms']} |")
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    rows = [r for r in report["rows"] if r["method"].startswith("constrained")]
    baseline = report["rows"][0]
    fig, (left, right) = figure(2, (10, 4))
    left.plot([r["batch"] for r in rows], [r["rulings_per_s"] for r in rows], marker="o", label="constrained, batched")
    left.axhline(baseline["rulings_per_s"], color="grey", linestyle="--", label="generate, one at a time")
    left.set_xscale("log", base=2)
    left.set_xlabel("batch size")
    left.set_ylabel("rulings/s")
    left.legend()
    right.plot([r["batch"] for r in rows], [r["latency_p50_ms"] for r in rows], marker="o", label="p50")
    right.plot([r["batch"] for r in rows], [r["latency_p95_ms"] for r in rows], marker="x", label="p95")
    right.axhline(baseline["latency_p50_ms"], color="grey", linestyle="--", label="baseline p50")
    right.set_xscale("log", base=2)
    right.set_xlabel("batch size")
    right.set_ylabel("latency per ruling (ms)")
    right.legend()
    fig.suptitle(f"Gen rulings: {report['model']['name']} on {report['model']['device']}")
    save_figure(fig, path, dpi=110)
