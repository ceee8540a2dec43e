"""``guardstream bench worker``: host work per delta of one stream worker vs a bare pass-through loop.

One backlog of one-Qwen3-token deltas is pre-loaded into an input topic; then, each in a fresh
process (so the process's CPU counters hold only that loop):

* ``passthrough``: consume, decode the JSON, produce, commit the offsets in a transaction; the
  least any exactly-once worker must do per delta;
* ``worker``: a real stream worker (``workers.stream.app.build_worker``) draining the backlog;
* ``worker (stages)``: the same again with timing hooks around the stage calls, for the
  breakdown by stage (the hooks cost a little, so the headline numbers come from the run without).

CPU time counts every thread of the process (``getrusage``), from just before the first
non-empty batch to the end of the batch that completes the backlog; ``/proc/self/task`` splits it
by thread (the loop thread, librdkafka's threads, the rest: ONNX Runtime's pool, watchdog timers).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Settings, add_settings_arguments, settings_from_args
from pipeline.errors import UserError
from workers.bench.models import bench_model
from workers.bench.results import figure, require_stack, save_figure, write_results

_SETTINGS = ("kafka_bootstrap", "redis_url", "state_dir", "partitions", "max_batch_tokens", "max_batch_wait_ms",
             "progress_every_tokens", "device", "engine_threads", "engine_spin_wait",
             "overlap_commits", "live_states_max")
DEFAULT_OUT = "bench-results/worker"
MODES = ("passthrough", "worker", "worker-stages")


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="CPU per delta (all threads) and deltas/s of one stream worker draining a "
                                      "backlog, against a bare transactional pass-through loop, with a "
                                      "breakdown by stage")
    p.add_argument("--deltas", type=int, default=20_000, help="backlog size in one-token deltas (default 20000)")
    p.add_argument("--quick", action="store_true", help="a 600-delta backlog: a smoke run")
    p.add_argument("--model", default="", help="ONNX export or checkpoint (default: a random tiny one)")
    p.add_argument("--no-stages", action="store_true", help="skip the extra run with timing hooks")
    p.add_argument("--timeout-s", type=float, default=300.0, help="give up on a run after this long")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"where JSON and PNG go (default {DEFAULT_OUT})")
    add_settings_arguments(p, _SETTINGS)
    p.set_defaults(func=run)


@dataclass
class DrainResult:
    mode: str
    deltas: int
    seconds: float
    cpu_s: float
    completed: bool
    threads_cpu_s: dict[str, float] = field(default_factory=dict)
    stages_ns: dict[str, int] = field(default_factory=dict)
    stage_calls: dict[str, int] = field(default_factory=dict)
    outputs: int = 0
    hook_cost_ns: float = 0.0

    @property
    def deltas_per_s(self) -> float:
        return self.deltas / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_delta(self) -> float:
        return 1e6 * self.cpu_s / self.deltas if self.deltas else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["deltas_per_s"] = round(self.deltas_per_s, 1)
        d["cpu_us_per_delta"] = round(self.cpu_us_per_delta, 2)
        d["threads_cpu_us_per_delta"] = {k: round(1e6 * v / max(1, self.deltas), 2)
                                         for k, v in self.threads_cpu_s.items()}
        d["stages_us_per_delta"] = {k: round(v / 1e3 / max(1, self.deltas), 2) for k, v in self.stages_ns.items()}
        return d


def run(args: argparse.Namespace) -> int:
    from pipeline.kafka.topics import delete_topics, ensure_topics

    settings = settings_from_args(args)
    deltas = 600 if args.quick else args.deltas
    if deltas < 1:
        raise UserError(f"--deltas must be at least 1, got {deltas}")
    require_stack(settings)
    model_path, model_label = bench_model(args.model, settings)
    prefix = f"benchw{uuid.uuid4().hex[:8]}"
    s = settings.replace(model=model_path, topic_in=f"{prefix}.guard.in", topic_verdicts=f"{prefix}.guard.verdicts",
                         topic_dlq=f"{prefix}.guard.in.dlq", metrics_port=0, log_level="WARNING")
    passthrough_out = f"{prefix}.passthrough.out"
    # Conversation state lives in Redis by conversation id, not by consumer group: the run with
    # hooks gets its own copy of the backlog (same shape, other ids) so it starts from fresh states.
    staged = s.replace(topic_in=f"{prefix}s.guard.in", topic_verdicts=f"{prefix}s.guard.verdicts",
                       topic_dlq=f"{prefix}s.guard.in.dlq")
    modes = [m for m in MODES if not (args.no_stages and m == "worker-stages")]
    topics = [s.topic_in, s.topic_verdicts, s.topic_dlq, passthrough_out]
    ensure_topics(s)
    ensure_topics(s.replace(topic_verdicts=passthrough_out))
    if "worker-stages" in modes:
        ensure_topics(staged)
        topics += [staged.topic_in, staged.topic_verdicts, staged.topic_dlq]
    results: list[DrainResult] = []
    try:
        loaded, conversations = preload_backlog(s, prefix, deltas)
        if "worker-stages" in modes:
            preload_backlog(staged, f"{prefix}s", deltas)
        print(f"bench worker: {loaded} deltas of {conversations} conversations pre-loaded into {s.topic_in}",
              flush=True)
        for mode in modes:
            print(f"bench worker: draining with {mode} ...", flush=True)
            result = drain_in_child((staged if mode == "worker-stages" else s).replace(stream_group=f"{prefix}-{mode}"),
                                    mode, loaded, passthrough_out, args.timeout_s)
            print(f"   {result.deltas:,} deltas, {result.deltas_per_s:,.0f} deltas/s, "
                  f"{result.cpu_us_per_delta:.1f} µs CPU/delta", flush=True)
            results.append(result)
    finally:
        delete_topics(s, topics)
    report = build_report(results, model_label, loaded, s, " ".join(_argv(args)))
    report["conversations"] = conversations
    text = render_markdown(report)
    write_results(Path(args.out), "worker", report, lambda path: _plot(results, path), text, report=text)
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    parts = ["guardstream bench worker"]
    if args.quick:
        parts.append("--quick")
    else:
        parts.append(f"--deltas {args.deltas}")
    if args.model:
        parts.append(f"--model {args.model}")
    if args.no_stages:
        parts.append("--no-stages")
    return parts


# --- backlog ---------------------------------------------------------------------------------------
def backlog_messages(prefix: str, deltas: int) -> list[tuple[str, bytes]]:
    """(key, encoded TokenDelta): conversations of one user and one assistant message, one token a delta.

    Interleaved across conversations as live traffic is, so micro-batches hold many conversations.
    """
    from pipeline.chunking import chunk_text
    from pipeline.tokens.files import load_qwen3_tokenizer
    from schemas.messages import TokenDelta, encode
    from workers.bench.e2e import ASSISTANT_TEXT, USER_TEXT

    tokenizer = load_qwen3_tokenizer()
    messages = [("user", chunk_text(USER_TEXT, "tokens", 1, tokenizer=tokenizer)),
                ("assistant", chunk_text(ASSISTANT_TEXT, "tokens", 1, tokenizer=tokenizer))]
    per_conversation = sum(len(tokens) for _, tokens in messages)
    conversations = max(1, math.ceil(deltas / per_conversation))
    streams = []
    for c in range(conversations):
        cid = f"{prefix}-{c}"
        streams.append([(cid, TokenDelta(conversation_id=cid, message_index=m, role=role,  # type: ignore[arg-type]
                                         seq=i, text=tok, final=i == len(tokens) - 1, ts_ms=0))
                        for m, (role, tokens) in enumerate(messages) for i, tok in enumerate(tokens)])
    out: list[tuple[str, bytes]] = []
    for i in range(per_conversation):
        out.extend((cid, encode(d)) for stream in streams for cid, d in [stream[i]])
    return out


def preload_backlog(settings: Settings, prefix: str, deltas: int) -> tuple[int, int]:
    """Publish the backlog and wait until Kafka has it all; returns (deltas, conversations)."""
    from pipeline.kafka.clients import make_producer

    overrides: dict[str, Any] = {"linger.ms": 20}
    producer = make_producer(settings, **overrides)
    messages = backlog_messages(prefix, deltas)
    for key, value in messages:
        while True:
            try:
                producer.produce(settings.topic_in, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60) != 0:
        raise RuntimeError("the backlog did not reach Kafka within 60 s")
    return len(messages), len({key for key, _ in messages})


# --- measuring one process -----------------------------------------------------------------------
def _process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _thread_cpu_clock(tid: int) -> int:
    """Linux's CPU-time clock id of any thread of this process (as pthread_getcpuclockid makes it)."""
    return ((~tid) << 3) | 6   # CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD_MASK


def _threads_cpu_ns() -> dict[int, tuple[str, int]]:
    """tid -> (thread name, CPU time in ns) for the live threads of this process, librdkafka's included."""
    threads: dict[int, tuple[str, int]] = {}
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return threads
    for tid in tids:
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            threads[tid] = (name, time.clock_gettime_ns(_thread_cpu_clock(tid)))
        except OSError:
            continue  # the thread ended meanwhile
    return threads


class DrainMeter:
    """CPU and wall time of this process from just before the first non-empty batch to the last one."""

    def __init__(self, target: int, clock: StageClock | None = None) -> None:
        self.target = target
        self.clock = clock
        self._stages_at_start: dict[str, int] = {}
        self._stages_pending: dict[str, int] = {}
        self._calls_at_start: dict[str, int] = {}
        self._calls_pending: dict[str, int] = {}
        self.deltas = 0
        self.loop_tid = 0
        self._pending: tuple[float, float, dict[int, tuple[str, int]]] | None = None
        self._start: tuple[float, float, dict[int, tuple[str, int]]] | None = None
        self._end: tuple[float, float, dict[int, tuple[str, int]]] | None = None
        self.stages_ns: dict[str, int] = {}
        self.stage_calls: dict[str, int] = {}

    @property
    def done(self) -> bool:
        return self._end is not None

    def before_batch(self) -> None:
        if self._start is None:
            self.loop_tid = threading.get_native_id()
            self._take_pending()

    def assigned(self) -> None:
        """Partitions were assigned inside consume(): their recovery is start-up, not the drain's cost."""
        if self._start is None:
            self._take_pending()

    def _take_pending(self) -> None:
        if self.clock is not None:
            self._stages_pending, self._calls_pending = dict(self.clock.ns), dict(self.clock.calls)
        self._pending = (time.perf_counter(), _process_cpu_s(), _threads_cpu_ns())

    def after_batch(self, handled: int) -> None:
        if handled <= 0 or self._end is not None:
            return
        if self._start is None:
            self._start = self._pending
            self._stages_at_start, self._calls_at_start = self._stages_pending, self._calls_pending
        self.deltas += handled
        if self.deltas >= self.target:
            self._end = (time.perf_counter(), _process_cpu_s(), _threads_cpu_ns())
            if self.clock is not None:
                self.stages_ns = {k: v - self._stages_at_start.get(k, 0) for k, v in self.clock.ns.items()}
                self.stage_calls = {k: v - self._calls_at_start.get(k, 0) for k, v in self.clock.calls.items()}

    def result(self, mode: str) -> DrainResult:
        start = self._start
        end = self._end or (time.perf_counter(), _process_cpu_s(), _threads_cpu_ns())
        if start is None:
            return DrainResult(mode, 0, 0.0, 0.0, False)
        groups: dict[str, float] = defaultdict(float)
        for tid, (name, cpu_ns) in end[2].items():
            used = (cpu_ns - start[2].get(tid, (name, 0))[1]) / 1e9
            group = ("loop thread" if tid == self.loop_tid else
                     "librdkafka threads" if name.startswith("rdk:") else "other threads")
            groups[group] += used
        cpu = end[1] - start[1]
        # Threads that ended inside the window (e.g. a Timer per transactional call) only show in the total.
        groups["ended threads"] = cpu - sum(groups.values())
        return DrainResult(mode, self.deltas, end[0] - start[0], cpu, self._end is not None,
                           {k: round(v, 4) for k, v in groups.items()},
                           {k: v for k, v in self.stages_ns.items() if v or self.stage_calls.get(k)},
                           {k: v for k, v in self.stage_calls.items() if v})


def drain_in_child(settings: Settings, mode: str, deltas: int, passthrough_out: str, timeout_s: float) -> DrainResult:
    """Run one drain in a fresh process ('spawn': no threads or ORT pools inherited from this one)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_main, args=(settings, mode, deltas, passthrough_out, timeout_s, queue),
                       name=f"bench-{mode}")
    proc.start()
    try:
        payload = queue.get(timeout=timeout_s + 120)
    except Exception as exc:  # queue.Empty, or the child died without answering
        proc.kill()
        raise RuntimeError(f"the {mode} run gave no result (exit code {proc.exitcode})") from exc
    finally:
        proc.join(30)
    if "error" in payload:
        raise RuntimeError(f"the {mode} run failed: {payload['error']}")
    return DrainResult(**payload)


def _child_main(settings: Settings, mode: str, deltas: int, passthrough_out: str, timeout_s: float,
                queue: Any) -> None:
    try:
        if mode == "passthrough":
            result = drain_passthrough(settings, deltas, passthrough_out, timeout_s)
        else:
            result = drain_worker(settings, deltas, timeout_s, stages=mode == "worker-stages")
            result.mode = mode
        queue.put(asdict(result))
    except Exception as exc:  # the parent reports it; a traceback would be lost with the process
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def drain_passthrough(settings: Settings, deltas: int, out_topic: str, timeout_s: float) -> DrainResult:
    """Consume, decode the JSON, produce, commit offsets in the transaction: per micro-batch, as the worker does."""
    from confluent_kafka import TopicPartition

    from pipeline.kafka.clients import make_consumer, make_producer

    s = settings
    producer_overrides: dict[str, Any] = {"transaction.timeout.ms": 10_000}
    consumer_overrides: dict[str, Any] = {"partition.assignment.strategy": "cooperative-sticky",
                                          "enable.auto.offset.store": False, "queued.max.messages.kbytes": 16384}
    producer = make_producer(s, transactional_id=f"{s.stream_group}-{uuid.uuid4().hex[:6]}", **producer_overrides)
    producer.init_transactions(30)
    consumer = make_consumer(s, s.stream_group, **consumer_overrides)
    meter = DrainMeter(deltas)
    consumer.subscribe([s.topic_in], on_assign=lambda _c, _p: meter.assigned())
    batch = max(1, min(s.max_inflight_deltas, s.max_batch_tokens))
    outputs = 0
    deadline = time.monotonic() + timeout_s
    try:
        while not meter.done and time.monotonic() < deadline:
            meter.before_batch()
            messages = consumer.consume(num_messages=batch, timeout=s.max_batch_wait_ms / 1000.0)
            offsets: dict[tuple[str, int], int] = {}
            handled = 0
            if messages:
                producer.begin_transaction()
            for msg in messages:
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                json.loads(value)
                producer.produce(out_topic, key=msg.key(), value=value)
                offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
                handled += 1
                outputs += 1
            if offsets:
                producer.send_offsets_to_transaction([TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                                     consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(30)
            elif messages:
                producer.abort_transaction(30)
            meter.after_batch(handled)
    finally:
        result = meter.result("passthrough")
        consumer.close()
        producer.flush(5)
    result.outputs = outputs
    return result


def drain_worker(settings: Settings, deltas: int, timeout_s: float, stages: bool) -> DrainResult:
    from pipeline.engine.types import FeedRequest
    from pipeline.logging import configure_logging
    from workers.stream.app import build_worker
    from workers.stream.metrics import StreamMetrics

    configure_logging("WARNING")
    metrics = StreamMetrics()
    worker = build_worker(settings, metrics)
    engine = worker.processor.engine
    engine.run([FeedRequest("bench-warm-up", [1, 2, 3, 4], 0)])   # ORT's first run allocates; not the drain's cost
    engine.evict("bench-warm-up")
    clock = StageClock()
    if stages:
        attach_stage_clock(clock, worker)
    meter = DrainMeter(deltas, clock if stages else None)
    stop = threading.Event()
    step = worker.step
    deadline = time.monotonic() + timeout_s

    def measured_step(wait_s: float) -> int:
        meter.before_batch()
        handled = step(wait_s)
        meter.after_batch(handled)
        if meter.done or time.monotonic() > deadline:
            stop.set()
        return handled

    on_assign = worker._on_assign

    def measured_assign(consumer: Any, partitions: Any) -> None:
        on_assign(consumer, partitions)
        meter.assigned()

    # run() looks these up on the instance (subscribe() takes the bound callback), so wrapping
    # them here measures the real loop without touching its code.
    worker.step = measured_step  # type: ignore[method-assign]
    worker._on_assign = measured_assign  # type: ignore[method-assign]
    worker.run(stop)
    result = meter.result("worker")
    if stages:
        result.hook_cost_ns = round(StageClock.hook_cost_ns(), 1)
    result.outputs = int(sum(sample.value for family in metrics.verdicts.collect() for sample in family.samples
                             if sample.name.endswith("_total")))
    return result


# --- stage timing hooks (only in the "worker-stages" run) -----------------------------------------
class StageClock:
    """Exclusive CPU time of the calling thread per stage: a stage excludes the hooked stages it calls.

    Thread CPU time, not wall time: on a shared machine wall time mostly measures the other tenants.
    Each hooked call costs two clock reads (about a microsecond), which the stage totals include.
    Nesting is tracked per thread: the transaction's calls run on the committer thread.
    """

    def __init__(self) -> None:
        self.ns: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self._local = threading.local()

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.thread_time_ns
        local = self._local
        ns, calls = self.ns, self.calls

        def timed(*args: Any, **kwargs: Any) -> Any:
            children: list[int] | None = getattr(local, "children", None)
            if children is None:
                children = local.children = []
            started = clock()
            children.append(0)
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = clock() - started
                ns[stage] += elapsed - children.pop()
                calls[stage] += 1
                if children:
                    children[-1] += elapsed

        return timed

    @staticmethod
    def hook_cost_ns(calls: int = 20_000) -> float:
        """CPU ns one hooked call adds (both clock reads and the wrapper), measured here and now."""
        probe = StageClock()
        noop = probe.wrap("noop", lambda: None)
        clock = time.thread_time_ns
        started = clock()
        for _ in range(calls):
            noop()
        hooked = clock() - started
        started = clock()
        for _ in range(calls):
            (lambda: None)()
        return max(0.0, (hooked - (clock() - started)) / calls)

    def hook(self, obj: Any, stage: str, names: tuple[str, ...]) -> None:
        for name in names:
            if callable(getattr(obj, name, None)):
                setattr(obj, name, self.wrap(stage, getattr(obj, name)))


# Stage -> where its calls are hooked. Module-level functions are replaced in this (child)
# process only; methods are replaced on the instances, so nothing changes outside this run.
def attach_stage_clock(clock: StageClock, worker: Any) -> None:
    import workers.stream.processing as processing

    processor = worker.processor
    scorer = processor.scorer
    engine = processor.engine
    clock.hook(worker, "kafka consume + loop", ("step",))
    clock.hook(worker, "partition recovery (start-up)", ("_on_assign",))
    clock.hook(worker.transactions, "kafka transaction", ("prepare", "send", "sent", "failed"))
    clock.hook(worker, "metrics + bookkeeping", ("_after_batch",))
    # Decoding and validating a delta is one call (pipeline.intake.accept) looked up in processing's namespace.
    processing.accept = clock.wrap("decode", processing.accept)
    clock.hook(processor, "batch bookkeeping", ("process",))
    clock.hook(worker.store, "redis", ("load", "load_with_watermarks", "watermarks", "write", "held_index"))
    clock.hook(scorer, "score", ("apply", "expire", "end", "pending", "absorb", "absorb_batch"))
    clock.hook(scorer, "state codec", ("new_state", "decode_state", "encode_state", "tombstone"))
    clock.hook(scorer.renderer, "render", ("render", "resume", "request", "take", "must_wait", "begin", "add_text",
                                          "close"))
    incremental = getattr(scorer.renderer, "incremental", None)
    if incremental is not None:
        clock.hook(incremental, "incremental tokenizer", ("feed", "finish"))
    clock.hook(scorer.text, "tokenize", ("encode_template", "encode_text", "encode_text_spans", "pre_tokenize",
                                         "tokenize_piece", "decode"))
    clock.hook(engine, "engine host side", ("run", "evict"))
    session = getattr(engine, "session", None)
    if session is not None:
        clock.hook(session, "model (ORT run)", ("run",))


# --- reporting ---------------------------------------------------------------------------------------
def build_report(results: list[DrainResult], model: str, deltas: int, settings: Settings,
                 command: str) -> dict[str, Any]:
    from workers.bench.engine import machine_description

    by_mode = {r.mode: r for r in results}
    ratio = None
    if "worker" in by_mode and "passthrough" in by_mode and by_mode["passthrough"].cpu_us_per_delta > 0:
        ratio = round(by_mode["worker"].cpu_us_per_delta / by_mode["passthrough"].cpu_us_per_delta, 2)
    return {
        "command": command,
        "machine": machine_description(["CPUExecutionProvider"]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": model,
        "backlog_deltas": deltas,
        "partitions": settings.partitions,
        "max_batch_tokens": settings.max_batch_tokens,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_ratio_worker_to_passthrough": ratio,
        "goal_ratio": 6.0,
        "results": [r.as_dict() for r in results],
    }


def render_markdown(report: dict[str, Any]) -> str:
    rows = ["| mode | deltas | deltas/s | CPU µs/delta (all threads) | loop thread | librdkafka | other threads | "
            "ended threads | outputs |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        t = r["threads_cpu_us_per_delta"]
        rows.append(f"| {r['mode']} | {r['deltas']:,} | {r['deltas_per_s']:,.0f} | {r['cpu_us_per_delta']:.1f} | "
                    f"{t.get('loop thread', 0):.1f} | {t.get('librdkafka threads', 0):.1f} | "
                    f"{t.get('other threads', 0):.1f} | {t.get('ended threads', 0):.1f} | "
                    f"{r['outputs']:,} |")
    ratio = report["cpu_ratio_worker_to_passthrough"]
    lines = ["Worker vs bare pass-through (backlog drain, one token per delta)", "", *rows, "",
             f"CPU per delta, worker / pass-through: {'-' if ratio is None else f'{ratio:.1f}x'} "
             f"(goal: at most {report['goal_ratio']:.0f}x)"]
    staged = [r for r in report["results"] if r["stages_us_per_delta"]]
    if staged:
        r = staged[0]
        total = sum(r["stages_us_per_delta"].values())
        lines += ["", "Breakdown by stage (CPU time of the thread running it: the loop, or the committer for the "
                  "transaction; exclusive of nested stages; run with hooks)", "",
                  "| stage | µs/delta | share | calls |", "|---|---|---|---|"]
        for stage, us in sorted(r["stages_us_per_delta"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {stage} | {us:.1f} | {100 * us / total:.0f}% | {r['stage_calls'].get(stage, 0):,} |")
        lines.append(f"| total | {total:.1f} | 100% | |")
        calls = sum(r["stage_calls"].values()) / max(1, r["deltas"])
        plain = next((x for x in report["results"] if x["mode"] == "worker"), None)
        lines += ["", f"The hooks add about {r['hook_cost_ns'] / 1e3:.1f} µs per hooked call "
                      f"({calls:.1f} calls per delta: ~{calls * r['hook_cost_ns'] / 1e3:.1f} µs/delta, charged "
                      "about half to the stage, half to its caller)"
                  + ("" if plain is None else
                     f"; the loop thread used {plain['threads_cpu_us_per_delta'].get('loop thread', 0):.1f} "
                     "µs/delta without hooks") + "."]
    return "\n".join(lines) + "\n"


def _plot(results: list[DrainResult], path: Path) -> None:
    fig, (ax_cpu, ax_stage) = figure(2, (11, 4))
    groups = ("loop thread", "librdkafka threads", "other threads", "ended threads")
    labels = [r.mode for r in results]
    bottoms = [0.0] * len(results)
    for group in groups:
        values = [max(0.0, 1e6 * r.threads_cpu_s.get(group, 0.0) / max(1, r.deltas)) for r in results]
        ax_cpu.bar(labels, values, bottom=bottoms, label=group)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax_cpu.set_ylabel("CPU µs per delta")
    ax_cpu.set_title("CPU per delta by thread (all threads of the process)", fontsize=10)
    ax_cpu.legend(fontsize=8)
    staged = [r for r in results if r.stages_ns]
    if staged:
        r = staged[0]
        items = sorted(r.stages_ns.items(), key=lambda kv: kv[1])
        ax_stage.barh([k for k, _ in items], [v / 1e3 / max(1, r.deltas) for _, v in items])
        ax_stage.set_xlabel("thread CPU µs per delta (loop + committer)")
        ax_stage.set_title("worker: breakdown by stage", fontsize=10)
    else:
        ax_stage.set_axis_off()
    save_figure(fig, path)
