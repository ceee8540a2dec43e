"""``guardstream bench e2e``: the whole path through Kafka, guardstream vs the official approach.

Per level of concurrent conversations, a fresh set of topics, ``--workers`` stream workers (each
its own process, engine and consumer, as in production: docs/deploy.md), and a paced load
generator in its own process (messages encoded before the clock starts, so it is not the
bottleneck; how late it produced each delta is reported); this process only reads the verdicts.
Every conversation streams one Qwen3 token per delta at ``--rate`` tokens/s and they start
staggered over a second. Peak offered rate =
conversations x rate; offered = the schedule's deltas over its span (ramp-up and ramp-down
included); generated = the same deltas over the time the generator took to produce them; judged
(throughput) = deltas and scored tokens over the time from the first delta produced to the last
verdict read. Verdict latency = verdict consumed - the delta it clears was produced (progress: the
delta at ``cleared_through_seq``; final: the message's last delta).

The baseline is the same worker with :class:`FullRecomputeEngine` (full re-run per token, batch 1).
Each worker process loads the model itself; the level's clock starts once they serve every partition.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.clock import now_ms
from pipeline.config import Settings, add_settings_arguments, settings_from_args
from workers.bench.models import bench_model
from workers.bench.results import cpu_count, figure, parse_levels, require_stack, save_figure, write_results

_SETTINGS = ("kafka_bootstrap", "redis_url", "state_dir", "partitions", "max_batch_tokens", "max_batch_wait_ms",
             "progress_every_tokens", "device", "engine_threads", "engine_spin_wait",
             "overlap_commits", "live_states_max")

USER_TEXT = ("Could you explain how photosynthesis works in simple terms, and why plants need sunlight, "
             "water and carbon dioxide to grow?")
ASSISTANT_TEXT = ("Plants capture sunlight with chlorophyll in their leaves. They use that energy to turn water "
                  "from the soil and carbon dioxide from the air into sugar, which feeds the plant, and they "
                  "release oxygen as a by-product. Without light the process stops, so plants grow slowly in "
                  "the dark and their leaves turn pale.")


def register(sub: Any) -> None:
    p = sub.add_parser("e2e", help="deltas/s, tokens/s and verdict latency through Kafka vs concurrent "
                                   "conversations, with the official full re-run approach as baseline")
    p.add_argument("--quick", action="store_true", help="small levels and short texts (a minute or two)")
    p.add_argument("--model", default="", help="ONNX export or checkpoint (default: a random tiny one)")
    p.add_argument("--levels", default="", help="comma-separated conversation counts (default 1,10,100,1000)")
    p.add_argument("--baseline-levels", default="", help="levels for the baseline (default: those up to 100)")
    p.add_argument("--rate", type=float, default=20.0, help="tokens per second per conversation (an LLM's pace)")
    p.add_argument("--workers", default="1", help="comma-separated stream worker process counts to run each level "
                                                   "with (e.g. 1,2: how throughput grows with workers per machine)")
    p.add_argument("--level-timeout-s", type=float, default=180.0, help="give up on a level after this long")
    p.add_argument("--out", default="bench-results/e2e", help="where JSON and PNG go")
    add_settings_arguments(p, _SETTINGS)
    p.set_defaults(func=run)


@dataclass
class LevelResult:
    mode: str
    conversations: int
    workers: int
    deltas: int
    tokens_scored: int
    seconds: float
    deltas_per_s: float
    tokens_per_s: float
    offered_tokens_per_s: float     # conversations x rate: the load once every conversation streams
    offered_deltas_per_s: float     # the schedule's average: deltas / (last due - first due), ramps included
    generated_deltas_per_s: float   # what the load generator achieved: deltas / (last - first produced)
    generator_lag_p50_ms: float     # how late after its due time a delta was produced
    generator_lag_p99_ms: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    final_latency_p50_ms: float | None
    final_latency_p99_ms: float | None
    finals_expected: int
    finals_seen: int
    completed: bool
    notes: list[str] = field(default_factory=list)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    require_stack(settings)
    levels = parse_levels(args.levels, (1, 5, 20) if args.quick else (1, 10, 100, 1000))
    baseline_levels = parse_levels(args.baseline_levels, tuple(n for n in levels if n <= (5 if args.quick else 100)))
    user_text, assistant_text = (USER_TEXT[:60], ASSISTANT_TEXT[:120]) if args.quick else (USER_TEXT, ASSISTANT_TEXT)
    worker_counts = parse_levels(args.workers, (1,))
    model_path, model_label = bench_model(args.model, settings)

    results: list[LevelResult] = []
    for mode in ("guardstream", "baseline"):
        for workers in worker_counts:
            for n in (levels if mode == "guardstream" else baseline_levels):
                print(f"[{mode}] {n} concurrent conversations, {workers} worker process(es) ...", flush=True)
                result = run_level(settings.replace(model=model_path), mode, workers, n, user_text, assistant_text,
                                   args.rate, args.level_timeout_s)
                print("   " + _row(result), flush=True)
                results.append(result)
    payload = {"model": model_label, "rate_tokens_per_s_per_conversation": args.rate, "quick": args.quick,
               "cpu_count": cpu_count(), "partitions": settings.partitions,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               # Other processes on the machine inflate latencies; the 1-minute load average says how much.
               "load_average_1m": round(os.getloadavg()[0], 2), "results": [asdict(r) for r in results]}
    payload["command"] = "guardstream bench e2e " + " ".join(_argv(args, settings))
    write_results(Path(args.out), "e2e", payload, lambda path: _plot(results, path), markdown_table(results),
                  report=render_report(payload, results))
    return 0


def _argv(args: argparse.Namespace, settings: Settings) -> list[str]:
    parts = ["--quick"] if args.quick else []
    chosen = (("--model", args.model), ("--levels", args.levels), ("--baseline-levels", args.baseline_levels))
    for flag, value in chosen:
        if value:
            parts.append(f"{flag} {value}")
    parts += [f"--rate {args.rate:g}", f"--workers {args.workers}", f"--partitions {settings.partitions}"]
    return parts


# Why guardstream's tail can be worse than the baseline's when there is almost no work (docs/benchmarks.md).
TINY_LOAD_P99_NOTE = (
    "At tiny load guardstream's p99 can exceed the baseline's. Both modes run the same worker (same Kafka "
    "transactions, Redis round trips and micro-batch wait); only the engine differs. With one or a few "
    "conversations of a tiny model and short texts, the baseline's full re-run of the prefix costs well under a "
    "millisecond, so its advantage of not re-running (guardstream's KV cache) is worth nothing, while "
    "guardstream's cache bookkeeping (past key/values in and out of every step) is a small fixed cost. "
    "Latency is then made of the fixed per-batch costs both share, and a p99 over a few dozen verdicts is one or "
    "two of the slowest: a scheduler hiccup or a transaction commit on a shared machine decides it. Compare p99 "
    "where the model's work matters: more conversations, longer texts or the real model size; there the "
    "baseline's cost grows with every token of context and guardstream's does not."
)


def render_report(payload: dict[str, Any], results: list[LevelResult]) -> str:
    """e2e.md: what ran, where, the table, and how to read it."""
    lines = [
        "# guardstream bench e2e",
        "",
        f"Command: `{payload['command']}`  ",
        f"Date: {payload['date']}; model: {payload['model']}; {payload['cpu_count']} usable CPU cores; "
        f"{payload['rate_tokens_per_s_per_conversation']:g} tokens/s per conversation.",
        "",
        markdown_table(results),
        "",
        "Latency: verdict read minus the time the delta it clears was produced (progress verdicts: the delta at "
        "`cleared_through_seq`; finals: the message's last delta). Throughput: deltas and scored tokens over "
        "first delta produced to last verdict read. The baseline is the same worker re-running the whole "
        "prefix for every token, batch 1 (the official approach).",
    ]
    by_level = {(r.mode, r.workers, r.conversations): r for r in results}
    worse = [r.conversations for r in results if r.mode == "guardstream"
             and (b := by_level.get(("baseline", r.workers, r.conversations))) is not None
             and r.latency_p99_ms is not None and b.latency_p99_ms is not None
             and r.latency_p99_ms > b.latency_p99_ms]
    lines += ["", "## Reading the p99", ""]
    if worse:
        lines.append(f"In this run guardstream's p99 exceeded the baseline's at {', '.join(map(str, worse))} "
                     "concurrent conversation(s).")
        lines.append("")
    lines.append(TINY_LOAD_P99_NOTE)
    return "\n".join(lines) + "\n"


# --- one level -----------------------------------------------------------------------------------
def run_level(settings: Settings, mode: str, workers: int, conversations: int, user_text: str,
              assistant_text: str, rate: float, timeout_s: float) -> LevelResult:
    from pipeline.chunking import chunk_text
    from pipeline.kafka.topics import delete_topics, ensure_topics
    from pipeline.tokens.files import load_qwen3_tokenizer

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    s = settings.replace(topic_in=f"{prefix}.guard.in", topic_verdicts=f"{prefix}.guard.verdicts",
                         topic_dlq=f"{prefix}.guard.in.dlq", stream_group=f"{prefix}-stream", metrics_port=0,
                         log_level="WARNING")
    ensure_topics(s)
    tokenizer = load_qwen3_tokenizer()
    user_tokens = chunk_text(user_text, "tokens", 1, tokenizer=tokenizer)
    assistant_tokens = chunk_text(assistant_text, "tokens", 1, tokenizer=tokenizer)
    pool = _WorkerProcesses(s, mode, workers)
    reader = _VerdictReader(s)
    tokens = 0
    try:
        pool.start()
        pool.wait_serving(timeout_s=120)
        reader.start()
        load = _produce_paced(s, prefix, conversations, user_tokens, assistant_tokens, rate)
        finals_expected = 2 * conversations
        end_by = time.monotonic() + timeout_s
        while reader.finals() < finals_expected and time.monotonic() < end_by:
            time.sleep(0.1)
        completed = reader.finals() >= finals_expected
        time.sleep(0.3)
    finally:
        tokens = pool.stop()
        reader.stop()
        delete_topics(s, [s.topic_in, s.topic_verdicts, s.topic_dlq])
    return _summarise(mode, workers, conversations, load, reader.seen, tokens, finals_expected, completed, rate)


class _WorkerProcesses:
    """``count`` stream workers of one consumer group, each in its own process with its own engine."""

    def __init__(self, settings: Settings, mode: str, count: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")   # a clean interpreter each: no ORT state shared
        self._serving = ctx.Array("i", count)        # per worker: partitions owned and recovered
        self._stop = ctx.Event()
        self._results = ctx.Queue()
        self._procs = [ctx.Process(target=_worker_main, name=f"bench-worker-{i}",
                                   args=(settings.replace(worker_instance=f"{settings.stream_group}-{i}"), mode, i,
                                         self._serving, self._stop, self._results))
                       for i in range(count)]
        self._partitions = settings.partitions

    def start(self) -> None:
        for proc in self._procs:
            proc.start()

    def wait_serving(self, timeout_s: float) -> None:
        """Until the workers serve every partition together (each owns some once more than one runs)."""
        deadline = time.monotonic() + timeout_s
        wanted = min(len(self._procs), self._partitions)
        while time.monotonic() < deadline:
            owned = self._serving[:]
            if sum(owned) == self._partitions and sum(1 for n in owned if n > 0) >= wanted:
                time.sleep(1.0)   # settled: no rebalance under way
                if self._serving[:] == owned:
                    return
            if any(not proc.is_alive() for proc in self._procs):
                raise RuntimeError("a bench worker process died while starting (its log is above)")
            time.sleep(0.1)
        raise RuntimeError(f"the workers did not serve all {self._partitions} partitions within {timeout_s:.0f} s")

    def stop(self) -> int:
        """Stop the workers; the tokens they scored together."""
        self._stop.set()
        tokens = 0
        for _ in self._procs:
            try:
                tokens += int(self._results.get(timeout=60))
            except Exception:   # queue.Empty: a worker died; its tokens are unknown
                break
        for proc in self._procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        return tokens


def _worker_main(settings: Settings, mode: str, index: int, serving: Any, stop: Any, results: Any) -> None:
    """One bench worker process: the product's stream worker; the baseline re-runs every prefix."""
    from pipeline.logging import configure_logging
    from pipeline.onnx.loader import open_stream_engine
    from workers.stream.app import build_worker
    from workers.stream.baseline import FullRecomputeEngine
    from workers.stream.metrics import StreamMetrics

    configure_logging(settings.log_level)
    engine = open_stream_engine(settings.model, settings)
    metrics = StreamMetrics()
    worker = build_worker(settings, metrics, engine=engine if mode == "guardstream" else FullRecomputeEngine(engine))
    done = threading.Event()
    thread = threading.Thread(target=worker.run, args=(done,), name="stream-worker", daemon=True)
    thread.start()
    while not stop.wait(0.1):
        serving[index] = len(worker.owned_partitions) - len(worker.recovering_partitions)
    done.set()
    thread.join(60)
    results.put(int(metrics.tokens._value.get()))


@dataclass
class GeneratedLoad:
    """What the load generator produced: per delta its produce time, and how late it ran."""

    produced: dict[tuple[str, int, int], int]   # (conversation id, message, seq) -> produced at, epoch ms
    first_ts: int
    last_ts: int
    scheduled_s: float   # due time of the last delta minus that of the first
    lag_p50_ms: float
    lag_p99_ms: float


def _produce_paced(settings: Settings, prefix: str, conversations: int, user_tokens: list[str],
                   assistant_tokens: list[str], rate: float) -> GeneratedLoad:
    """Run the load generator in its own process, so its pacing does not share this process's GIL."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_generator_main, name="bench-load-generator",
                       args=(settings, prefix, conversations, user_tokens, assistant_tokens, rate, queue))
    proc.start()
    duration = (len(user_tokens) + len(assistant_tokens)) / rate if rate > 0 else 0.0
    try:
        payload = queue.get(timeout=duration + 180)
    except Exception as exc:  # queue.Empty, or the generator died without answering
        proc.kill()
        raise RuntimeError(f"the load generator gave no result (exit code {proc.exitcode})") from exc
    finally:
        proc.join(30)
    if isinstance(payload, str):
        raise RuntimeError(f"the load generator failed: {payload}")
    produced = {(cid, msg, seq): ts for cid, msg, seq, ts in payload.pop("produced")}
    return GeneratedLoad(produced=produced, **payload)


def paced_schedule(prefix: str, conversations: int, user_tokens: list[str], assistant_tokens: list[str],
                   rate: float, base_ms: int) -> list[tuple[float, str, int, int, bytes]]:
    """(due offset s, conversation id, message, seq, encoded delta), in due order, encoded up front.

    Conversations start staggered over one second; each streams its user then its assistant
    message one token per delta, ``rate`` deltas per second.
    """
    from schemas.messages import TokenDelta, encode

    interval = 1.0 / rate if rate > 0 else 0.0
    messages = (("user", user_tokens), ("assistant", assistant_tokens))
    schedule = []
    for conv in range(conversations):
        cid = f"{prefix}-{conv}"  # unique per level: no KV cache carried over between levels
        due = conv / max(1, conversations)
        for msg, (role, tokens) in enumerate(messages):
            for seq, text in enumerate(tokens):
                delta = TokenDelta(conversation_id=cid, message_index=msg, role=role,  # type: ignore[arg-type]
                                   seq=seq, text=text, final=seq == len(tokens) - 1,
                                   ts_ms=base_ms + int(due * 1000))
                schedule.append((due, cid, msg, seq, encode(delta)))
                due += interval
    schedule.sort(key=lambda item: item[0])
    return schedule


def _generator_main(settings: Settings, prefix: str, conversations: int, user_tokens: list[str],
                    assistant_tokens: list[str], rate: float, queue: Any) -> None:
    try:
        queue.put(generate_load(settings, prefix, conversations, user_tokens, assistant_tokens, rate))
    except Exception as exc:  # the parent reports it; a traceback would be lost with the process
        queue.put(f"{type(exc).__name__}: {exc}")


def generate_load(settings: Settings, prefix: str, conversations: int, user_tokens: list[str],
                  assistant_tokens: list[str], rate: float) -> dict[str, Any]:
    from pipeline.kafka.clients import make_producer

    overrides: dict[str, Any] = {"linger.ms": 1}
    producer = make_producer(settings, **overrides)
    base_ms = now_ms() + 500 + conversations * 2  # the encoding below fits in this head start
    schedule = paced_schedule(prefix, conversations, user_tokens, assistant_tokens, rate, base_ms)
    start = max(base_ms / 1000.0, time.time() + 0.1)
    produced: list[tuple[str, int, int, int]] = []
    lags: list[float] = []
    topic = settings.topic_in
    i = 0
    while i < len(schedule):
        now = time.time()
        wait = start + schedule[i][0] - now
        if wait > 0.0005:
            producer.poll(0)
            time.sleep(min(wait, 0.02))
            continue
        # Everything due by now goes out in one burst; lateness is measured per delta.
        while i < len(schedule) and start + schedule[i][0] <= now:
            due, cid, msg, seq, value = schedule[i]
            while True:
                try:
                    producer.produce(topic, key=cid, value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
            at = time.time()
            produced.append((cid, msg, seq, int(at * 1000)))
            lags.append(1000.0 * (at - start - due))
            i += 1
    producer.flush(60)
    return {"produced": produced, "first_ts": produced[0][3] if produced else 0,
            "last_ts": produced[-1][3] if produced else 0,
            "scheduled_s": schedule[-1][0] - schedule[0][0] if schedule else 0.0,
            "lag_p50_ms": _percentile(lags, 0.5) or 0.0, "lag_p99_ms": _percentile(lags, 0.99) or 0.0}


class _VerdictReader:
    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from pipeline.kafka.clients import consumer_config

        self._consumer = Consumer(consumer_config(settings, f"bench-reader-{uuid.uuid4().hex[:8]}"))
        self._consumer.assign([TopicPartition(settings.topic_verdicts, p, OFFSET_BEGINNING)
                               for p in range(settings.partitions)])
        self.seen: list[tuple[int, Any]] = []   # (consumed at, Verdict)
        self._finals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finals(self) -> int:
        return self._finals

    def _run(self) -> None:
        from schemas.messages import decode_verdict

        while not self._stop.is_set():
            for msg in self._consumer.consume(500, 0.05):
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                at = now_ms()
                verdict = decode_verdict(value)
                self.seen.append((at, verdict))
                if verdict.kind == "final":
                    self._finals += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _summarise(mode: str, workers: int, conversations: int, load: GeneratedLoad, seen: list[tuple[int, Any]],
               tokens: int, finals_expected: int, completed: bool, rate: float) -> LevelResult:
    produced, first_ts = load.produced, load.first_ts
    last_seq: dict[tuple[str, int], int] = {}
    for cid, msg, chunk in produced:
        last_seq[(cid, msg)] = max(last_seq.get((cid, msg), -1), chunk)
    latencies: list[float] = []
    final_latencies: list[float] = []
    for at, v in seen:
        seq: int | None = (v.cleared_through_seq if v.kind == "progress"
                           else last_seq.get((v.conversation_id, v.message_index)))
        if seq is None or seq < 0:
            continue
        sent = produced.get((v.conversation_id, v.message_index, seq))
        if sent is None:
            continue
        latencies.append(float(at - sent))
        if v.kind == "final":
            final_latencies.append(float(at - sent))
    last = max((at for at, _ in seen), default=first_ts)
    seconds = max(1e-3, (last - first_ts) / 1000.0)
    finals = sum(1 for _, v in seen if v.kind == "final")
    notes = [] if completed else [f"stopped after the level timeout with {finals}/{finals_expected} final verdicts"]
    return LevelResult(
        mode=mode, conversations=conversations, workers=workers, deltas=len(produced), tokens_scored=tokens,
        seconds=seconds,
        deltas_per_s=len(produced) / seconds, tokens_per_s=tokens / seconds,
        offered_tokens_per_s=conversations * rate,
        # n deltas span n - 1 intervals: one conversation alone is offered exactly ``rate``.
        offered_deltas_per_s=(len(produced) - 1) / max(1e-3, load.scheduled_s),
        generated_deltas_per_s=(len(produced) - 1) / max(1e-3, (load.last_ts - first_ts) / 1000.0),
        generator_lag_p50_ms=load.lag_p50_ms, generator_lag_p99_ms=load.lag_p99_ms,
        latency_p50_ms=_percentile(latencies, 0.5), latency_p99_ms=_percentile(latencies, 0.99),
        final_latency_p50_ms=_percentile(final_latencies, 0.5),
        final_latency_p99_ms=_percentile(final_latencies, 0.99),
        finals_expected=finals_expected, finals_seen=finals, completed=completed, notes=notes,
    )


# --- reporting -------------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _row(r: LevelResult) -> str:
    return (f"offered {r.offered_deltas_per_s:,.0f} deltas/s, generated {r.generated_deltas_per_s:,.0f} "
            f"(lag p99 {r.generator_lag_p99_ms:,.0f} ms), judged {r.deltas_per_s:,.0f} deltas/s, "
            f"{r.tokens_per_s:,.0f} tokens/s, latency p50 {_fmt(r.latency_p50_ms)} ms p99 {_fmt(r.latency_p99_ms)} ms, "
            f"finals {r.finals_seen}/{r.finals_expected}")


def markdown_table(results: list[LevelResult]) -> str:
    rows = ["| mode | workers | conversations | peak offered deltas/s | offered deltas/s | generated deltas/s | "
            "generator lag p99 ms | judged deltas/s | tokens/s | latency p50 ms | latency p99 ms | final p50 ms | "
            "final p99 ms | finals |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.mode} | {r.workers} | {r.conversations} | {r.offered_tokens_per_s:,.0f} | "
                    f"{r.offered_deltas_per_s:,.0f} | "
                    f"{r.generated_deltas_per_s:,.0f} | {r.generator_lag_p99_ms:,.0f} | {r.deltas_per_s:,.0f} | "
                    f"{r.tokens_per_s:,.0f} | "
                    f"{_fmt(r.latency_p50_ms)} | {_fmt(r.latency_p99_ms)} | {_fmt(r.final_latency_p50_ms)} | "
                    f"{_fmt(r.final_latency_p99_ms)} | {r.finals_seen}/{r.finals_expected} |")
    return "\n".join(rows)


def _plot(results: list[LevelResult], path: Path) -> None:
    fig, (ax_lat, ax_tp) = figure(2, (11, 4))
    for mode, style in (("guardstream", "-o"), ("baseline", "--s")):
        for workers in sorted({r.workers for r in results}):
            rs = [r for r in results if r.mode == mode and r.workers == workers and r.latency_p50_ms is not None]
            if not rs:
                continue
            name = mode if workers == 1 else f"{mode} x{workers}"
            xs = [r.conversations for r in rs]
            ax_lat.plot(xs, [r.latency_p50_ms for r in rs], style, label=f"{name} p50")
            ax_lat.plot(xs, [r.latency_p99_ms for r in rs], style, alpha=0.5, label=f"{name} p99")
            ax_tp.plot(xs, [r.tokens_per_s for r in rs], style, label=name)
    for ax, title, ylabel in ((ax_lat, "verdict latency (delta produced -> verdict read)", "ms"),
                              (ax_tp, "tokens scored per second", "tokens/s")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent conversations")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)

