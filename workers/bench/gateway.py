"""``guardstream bench gateway``: time to first token and inter-token latency through the gateway
against straight to the upstream, in the same run, at several levels of concurrent streams.

Everything runs on this machine: a scripted OpenAI-compatible upstream (fixed text, one token
every ``--token-delay-ms``), one stream worker in this process, and the gateway, each served by
uvicorn on loopback. Clients are httpx + httpx-sse streams. "direct" is the upstream alone; "gateway"
adds the prompt check, Kafka, the worker and guarded release. The worker runs a policy under which
no reply token counts as risky (thresholds of 1.0, loose), so every reply is released whole: the
bench measures the release path, not what a random model happens to block.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Settings, add_settings_arguments, settings_from_args
from pipeline.errors import UserError
from workers.bench.models import open_bench_engine
from workers.bench.results import cpu_count, figure, parse_levels, require_stack, save_figure, write_results

_SETTINGS = ("kafka_bootstrap", "redis_url", "state_dir", "partitions", "max_batch_tokens", "max_batch_wait_ms",
             "progress_every_tokens", "device")
PROMPT = "How do I bake bread at home?"
RELEASE_ALL_POLICY = "default: {mode: loose, unsafe_threshold: 1.0, risky_threshold: 1.0}\n"
REPLY_TEXT = ("Mix flour, water, salt and yeast, knead the dough until smooth, let it rise somewhere warm, shape "
              "it, let it rise again and bake it in a hot oven until the crust is golden and it sounds hollow.")


def register(sub: Any) -> None:
    p = sub.add_parser("gateway", help="time to first token and inter-token latency through the gateway vs "
                                       "straight to the upstream, at 1, 10 and 100 concurrent streams")
    p.add_argument("--quick", action="store_true", help="levels 1 and 5, short replies (under a minute)")
    p.add_argument("--model", default="", help="ONNX export or checkpoint (default: a random tiny one)")
    p.add_argument("--levels", default="", help="comma-separated concurrent streams (default 1,10,100)")
    p.add_argument("--tokens", type=int, default=0, help="reply length in tokens (default 64; quick 24)")
    p.add_argument("--token-delay-ms", type=int, default=20, help="the scripted upstream's pace per token")
    p.add_argument("--out", default="bench-results/gateway", help="where JSON and PNG go")
    add_settings_arguments(p, _SETTINGS)
    p.set_defaults(func=run)


@dataclass
class LevelResult:
    path: str
    streams: int
    completed: int
    finish_reasons: dict[str, int]
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    total_p50_ms: float | None


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    require_stack(settings)
    levels = parse_levels(args.levels, (1, 5) if args.quick else (1, 10, 100))
    tokens = args.tokens or (24 if args.quick else 64)
    if tokens < 1 or args.token_delay_ms < 0:
        raise UserError("--tokens must be at least 1 and --token-delay-ms at least 0")
    words = REPLY_TEXT.split(" ")
    reply = [(" " if i else "") + words[i % len(words)] for i in range(tokens)]
    engine, model_path, model_label = open_bench_engine(args.model, settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    policy = out / "bench-policy.yaml"
    policy.write_text(RELEASE_ALL_POLICY)
    results = measure(settings.replace(model=model_path, policy_file=str(policy)), engine, levels, reply,
                      args.token_delay_ms / 1000)
    payload = {"model": model_label, "reply_tokens": tokens, "token_delay_ms": args.token_delay_ms,
               "cpu_count": cpu_count(), "results": [asdict(r) for r in results]}
    write_results(out, "gateway", payload, lambda path: _plot(results, path), markdown_table(results))
    return 0


def measure(settings: Settings, engine: Any, levels: tuple[int, ...], reply: list[str],
            delay_s: float) -> list[LevelResult]:
    from pipeline.gateway.app import create_app
    from pipeline.gateway.scripted import ScriptedUpstream, ServerThread
    from pipeline.kafka.topics import delete_topics, ensure_topics
    from workers.stream.app import build_worker
    from workers.stream.metrics import StreamMetrics

    prefix = f"benchgw{uuid.uuid4().hex[:8]}"
    s = settings.replace(topic_in=f"{prefix}.guard.in", topic_verdicts=f"{prefix}.guard.verdicts",
                         topic_dlq=f"{prefix}.guard.in.dlq", stream_group=f"{prefix}-stream", metrics_port=0,
                         log_level="WARNING")
    ensure_topics(s)
    worker = build_worker(s, StreamMetrics(), engine=engine)
    stop = threading.Event()
    worker_thread = threading.Thread(target=worker.run, args=(stop,), name="bench-worker", daemon=True)
    upstream = ServerThread(ScriptedUpstream(reply, delay_s).app())
    gateway: ServerThread | None = None
    results: list[LevelResult] = []
    try:
        worker_thread.start()
        deadline = time.monotonic() + 60
        while len(worker.owned_partitions) < s.partitions and time.monotonic() < deadline:
            time.sleep(0.1)
        upstream.start()
        gateway = ServerThread(create_app(s.replace(upstream=f"{upstream.url}/v1"))).start()
        for n in levels:
            for path, url in (("direct", upstream.url), ("gateway", gateway.url)):
                print(f"[{path}] {n} concurrent streams ...", flush=True)
                results.append(asyncio.run(_level(path, url, n)))
                print("   " + _row(results[-1]), flush=True)
    finally:
        if gateway is not None:
            gateway.stop()
        upstream.stop()
        stop.set()
        worker_thread.join(60)
        delete_topics(s, [s.topic_in, s.topic_verdicts, s.topic_dlq])
    return results


# --- clients ---------------------------------------------------------------------------------------
async def _one(http: Any, url: str) -> tuple[float | None, list[float], float, str | None]:
    """(time to first token, gaps between tokens, total, finish reason) of one streamed request."""
    from httpx_sse import aconnect_sse

    body = {"model": "scripted", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    started = time.perf_counter()
    first: float | None = None
    last = started
    gaps: list[float] = []
    finish = None
    async with aconnect_sse(http, "POST", f"{url}/v1/chat/completions", json=body) as source:
        async for event in source.aiter_sse():
            if event.data == "[DONE]":
                break
            data = json.loads(event.data)
            for choice in data.get("choices") or []:
                finish = choice.get("finish_reason") or finish
                if (choice.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    if first is None:
                        first = now - started
                    else:
                        gaps.append(now - last)
                    last = now
    return first, gaps, time.perf_counter() - started, finish


async def _level(path: str, url: str, streams: int) -> LevelResult:
    import httpx

    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        outcomes = await asyncio.gather(*(_one(http, url) for _ in range(streams)), return_exceptions=True)
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    reasons: dict[str, int] = {}
    for o in outcomes:
        key = type(o).__name__ if isinstance(o, BaseException) else str(o[3])
        reasons[key] = reasons.get(key, 0) + 1
    ttft = [o[0] * 1000 for o in done if o[0] is not None]
    itl = [g * 1000 for o in done for g in o[1]]
    total = [o[2] * 1000 for o in done]
    return LevelResult(path, streams, len(done), reasons, _pct(ttft, 0.5), _pct(ttft, 0.99), _pct(itl, 0.5),
                       _pct(itl, 0.99), _pct(total, 0.5))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


# --- reporting -------------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _row(r: LevelResult) -> str:
    return (f"TTFT p50 {_fmt(r.ttft_p50_ms)} ms p99 {_fmt(r.ttft_p99_ms)} ms, inter-token p50 {_fmt(r.itl_p50_ms)} "
            f"ms p99 {_fmt(r.itl_p99_ms)} ms, {r.completed}/{r.streams} done {r.finish_reasons}")


def markdown_table(results: list[LevelResult]) -> str:
    rows = ["| path | streams | TTFT p50 ms | TTFT p99 ms | inter-token p50 ms | inter-token p99 ms | "
            "total p50 ms | finish reasons |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.finish_reasons.items()))
        rows.append(f"| {r.path} | {r.streams} | {_fmt(r.ttft_p50_ms)} | {_fmt(r.ttft_p99_ms)} | "
                    f"{_fmt(r.itl_p50_ms)} | {_fmt(r.itl_p99_ms)} | {_fmt(r.total_p50_ms)} | {reasons} |")
    return "\n".join(rows)


def _plot(results: list[LevelResult], path: Path) -> None:
    fig, (ax_ttft, ax_itl) = figure(2, (11, 4))
    for name, style in (("direct", "--s"), ("gateway", "-o")):
        rs = [r for r in results if r.path == name and r.ttft_p50_ms is not None]
        if not rs:
            continue
        xs = [r.streams for r in rs]
        ax_ttft.plot(xs, [r.ttft_p50_ms for r in rs], style, label=f"{name} p50")
        ax_ttft.plot(xs, [r.ttft_p99_ms for r in rs], style, alpha=0.5, label=f"{name} p99")
        ax_itl.plot(xs, [r.itl_p50_ms for r in rs], style, label=f"{name} p50")
        ax_itl.plot(xs, [r.itl_p99_ms for r in rs], style, alpha=0.5, label=f"{name} p99")
    for ax, title in ((ax_ttft, "time to first token"), (ax_itl, "inter-token latency")):
        ax.set_xscale("log")
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("ms")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)
