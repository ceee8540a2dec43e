"""``guardstream bench soak --minutes N``: steady load with a hostile fraction, memory and lag over time.

One stream worker runs as a child process (``python -m workers.stream``, as in production) on
fresh topics. A paced producer keeps ``--concurrency`` conversations streaming (one Qwen3 token
per delta, each conversation closed with ``end`` so its state is deleted) at ``--rate`` deltas/s,
and replaces a ``--hostile`` fraction of the records by hostile ones: malformed JSON, a Kafka key
that is not the conversation id, a text over ``max_text_bytes``. Every ``--sample-s`` it records
the worker's RSS (/proc), Redis' ``used_memory`` and the group's lag (input end minus committed
offsets). The goal is flat memory and bounded lag; the first minute is the baseline the rest is
compared with (same run).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.clock import now_ms
from pipeline.config import Settings, add_settings_arguments, settings_environment, settings_from_args
from pipeline.errors import UserError
from workers.bench.models import open_bench_engine
from workers.bench.results import cpu_count, figure, require_stack, save_figure, write_results

_SETTINGS = ("kafka_bootstrap", "redis_url", "state_dir", "partitions", "max_batch_tokens", "max_batch_wait_ms",
             "max_text_bytes")

USER_TEXT = "Could you explain how photosynthesis works in simple terms, and why plants need sunlight?"
ASSISTANT_TEXT = ("Plants capture sunlight with chlorophyll. They turn water and carbon dioxide into sugar, "
                  "which feeds the plant, and release oxygen as a by-product.")
HOSTILE_KINDS = ("bad_json", "key_mismatch", "huge_text")


def register(sub: Any) -> None:
    p = sub.add_parser("soak", help="steady load with hostile input for N minutes: worker RSS, Redis memory and "
                                    "lag over time (JSON, plot, table)")
    p.add_argument("--minutes", type=float, default=30.0, help="how long to run the load")
    p.add_argument("--rate", type=float, default=100.0, help="records per second offered")
    p.add_argument("--concurrency", type=int, default=20, help="conversations streaming at once")
    p.add_argument("--hostile", type=float, default=0.05, help="fraction of records that are hostile")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--model", default="", help="ONNX export or checkpoint (default: a random tiny one)")
    p.add_argument("--out", default="bench-results/soak", help="where JSON and PNG go")
    add_settings_arguments(p, _SETTINGS)
    p.set_defaults(func=run)


@dataclass
class Sample:
    t_s: float
    worker_rss_mb: float
    redis_used_mb: float
    lag: int
    produced: int
    hostile: int


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    require_stack(settings)
    if args.minutes <= 0 or args.rate <= 0 or not 0 <= args.hostile < 1:
        raise UserError("--minutes and --rate must be positive and --hostile in [0, 1)")
    _, model_path, model_label = open_bench_engine(args.model, settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples, worker_code = soak(settings.replace(model=model_path), args.minutes * 60, args.rate,
                                args.concurrency, args.hostile, args.sample_s, out / "soak-worker.log")
    payload = {"model": model_label, "minutes": args.minutes, "rate_records_per_s": args.rate,
               "concurrency": args.concurrency, "hostile_fraction": args.hostile, "cpu_count": cpu_count(),
               "worker_exit_code": worker_code, "summary": summarise(samples),
               "samples": [asdict(s) for s in samples]}
    write_results(out, "soak", payload, lambda path: _plot(samples, path), markdown_table(samples),
                  also=(out / "soak-worker.log",))
    if worker_code is not None:
        raise UserError(f"the stream worker died during the soak (exit code {worker_code}); see "
                        f"{out / 'soak-worker.log'}")
    return 0


def soak(settings: Settings, seconds: float, rate: float, concurrency: int, hostile: float, sample_s: float,
         log_path: Path) -> tuple[list[Sample], int | None]:
    """Run the load; returns the samples and the worker's exit code if it died (None: it lived)."""
    import redis

    from pipeline.kafka.topics import delete_topics, ensure_topics

    prefix = f"soak{uuid.uuid4().hex[:8]}"
    s = settings.replace(topic_in=f"{prefix}.guard.in", topic_verdicts=f"{prefix}.guard.verdicts",
                         topic_dlq=f"{prefix}.guard.in.dlq", stream_group=f"{prefix}-stream", metrics_port=0,
                         worker_instance=f"{prefix}-0")
    ensure_topics(s)
    env = {**os.environ, **settings_environment(s), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with log_path.open("ab") as log:
        worker = subprocess.Popen([sys.executable, "-m", "workers.stream"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    load = _Load(s, prefix, rate, concurrency, hostile)
    client = redis.Redis.from_url(s.redis_url)
    samples: list[Sample] = []
    started = time.monotonic()
    try:
        load.start()
        while time.monotonic() - started < seconds and worker.poll() is None:
            time.sleep(min(sample_s, max(0.0, seconds - (time.monotonic() - started))))
            samples.append(Sample(
                t_s=round(time.monotonic() - started, 1), worker_rss_mb=_rss_mb(worker.pid),
                redis_used_mb=int(client.info("memory")["used_memory"]) / 2**20, lag=_lag(s),
                produced=load.produced, hostile=load.hostile))
            print(f"  t={samples[-1].t_s:>6.0f}s rss={samples[-1].worker_rss_mb:7.1f} MB "
                  f"redis={samples[-1].redis_used_mb:7.2f} MB lag={samples[-1].lag}", flush=True)
    finally:
        load.stop()
        code = worker.poll()
        if code is None:
            worker.terminate()
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
        client.close()
        delete_topics(s, [s.topic_in, s.topic_verdicts, s.topic_dlq])
    return samples, code


class _Load:
    """A paced producer thread: ``concurrency`` conversations at a time, a hostile fraction mixed in."""

    def __init__(self, settings: Settings, prefix: str, rate: float, concurrency: int, hostile: float) -> None:
        self.settings = settings
        self.prefix = prefix
        self.rate = rate
        self.concurrency = max(1, concurrency)
        self.hostile_fraction = hostile
        self.produced = 0
        self.hostile = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        from pipeline.chunking import chunk_text
        from pipeline.kafka.clients import make_producer
        from pipeline.tokens.files import load_qwen3_tokenizer

        tokenizer = load_qwen3_tokenizer()
        messages = [("user", chunk_text(USER_TEXT, "tokens", 1, tokenizer=tokenizer)),
                    ("assistant", chunk_text(ASSISTANT_TEXT, "tokens", 1, tokenizer=tokenizer))]
        overrides: dict[str, Any] = {"linger.ms": 5}
        producer = make_producer(self.settings, **overrides)
        rng = random.Random(0)
        scripts = [self._script(n, messages) for n in range(self.concurrency)]
        next_id = self.concurrency
        interval = 1.0 / self.rate
        due = time.monotonic()
        slot = 0
        while not self._stop.is_set():
            due += interval
            pause = due - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)
            if rng.random() < self.hostile_fraction:
                key, value = self._hostile(rng)
                self.hostile += 1
            else:
                try:
                    key, value = next(scripts[slot])
                except StopIteration:
                    scripts[slot] = self._script(next_id, messages)
                    next_id += 1
                    key, value = next(scripts[slot])
                slot = (slot + 1) % self.concurrency
            _produce(producer, self.settings.topic_in, key, value)
            self.produced += 1
        producer.flush(30)

    def _script(self, n: int, messages: list[tuple[str, list[str]]]) -> Any:
        from schemas.messages import TokenDelta, encode

        cid = f"{self.prefix}-{n}"
        for index, (role, tokens) in enumerate(messages):
            for seq, text in enumerate(tokens):
                yield cid, encode(TokenDelta(conversation_id=cid, message_index=index, role=role,  # type: ignore[arg-type]
                                             seq=seq, text=text, final=seq == len(tokens) - 1,
                                             ts_ms=now_ms()))
        yield cid, encode(TokenDelta(conversation_id=cid, type="end"))

    def _hostile(self, rng: random.Random) -> tuple[str, bytes]:
        from schemas.messages import TokenDelta, encode

        kind = rng.choice(HOSTILE_KINDS)
        cid = f"{self.prefix}-hostile-{uuid.uuid4().hex[:8]}"
        if kind == "bad_json":
            return cid, b'{"conversation_id": "' + cid.encode() + b'", "seq": [' * 50
        if kind == "key_mismatch":
            return f"not-{cid}", encode(TokenDelta(conversation_id=cid, message_index=0, role="user", seq=0,
                                                   text="hello"))
        huge = "x" * (self.settings.max_text_bytes + 1)
        return cid, encode(TokenDelta(conversation_id=cid, message_index=0, role="user", seq=0, text=huge))


def _produce(producer: Any, topic: str, key: str, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            producer.poll(0)
            return
        except BufferError:
            producer.poll(0.05)


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _lag(settings: Settings) -> int:
    """Input records after the group's committed offsets (what is still to be judged); -1: unknown."""
    from confluent_kafka import KafkaException

    from pipeline.kafka.lag import committed_lag

    try:
        return committed_lag(settings)
    except KafkaException:
        return -1


def summarise(samples: list[Sample]) -> dict[str, Any]:
    """First minute (the baseline) against the last minute."""
    if not samples:
        return {}
    end = samples[-1].t_s
    first = [s for s in samples if s.t_s <= 60] or samples[:1]
    last = [s for s in samples if s.t_s >= end - 60] or samples[-1:]

    def mean(xs: list[float]) -> float:
        return round(sum(xs) / len(xs), 2)

    return {
        "rss_mb_first_minute": mean([s.worker_rss_mb for s in first]),
        "rss_mb_last_minute": mean([s.worker_rss_mb for s in last]),
        "rss_mb_max": round(max(s.worker_rss_mb for s in samples), 2),
        "redis_mb_first_minute": mean([s.redis_used_mb for s in first]),
        "redis_mb_last_minute": mean([s.redis_used_mb for s in last]),
        "redis_mb_max": round(max(s.redis_used_mb for s in samples), 2),
        "lag_max": max(s.lag for s in samples),
        "lag_last": samples[-1].lag,
        "records": samples[-1].produced,
        "hostile_records": samples[-1].hostile,
        "seconds": end,
    }


def markdown_table(samples: list[Sample]) -> str:
    summary = summarise(samples)
    if not summary:
        return "no samples"
    rows = ["| measure | first minute (baseline) | last minute | max |", "|---|---|---|---|",
            f"| worker RSS, MB | {summary['rss_mb_first_minute']:.1f} | {summary['rss_mb_last_minute']:.1f} | "
            f"{summary['rss_mb_max']:.1f} |",
            f"| Redis used_memory, MB | {summary['redis_mb_first_minute']:.2f} | "
            f"{summary['redis_mb_last_minute']:.2f} | {summary['redis_mb_max']:.2f} |",
            f"| lag, records | - | {summary['lag_last']} (at the end) | {summary['lag_max']} |"]
    rows.append(f"\n{summary['records']} records in {summary['seconds']:.0f} s, {summary['hostile_records']} hostile")
    return "\n".join(rows)


def _plot(samples: list[Sample], path: Path) -> None:
    fig, axes = figure(3, (13, 3.6))
    ts = [s.t_s / 60 for s in samples]
    series = (([s.worker_rss_mb for s in samples], "worker RSS", "MB"),
              ([s.redis_used_mb for s in samples], "Redis used_memory", "MB"),
              ([s.lag for s in samples], "lag (input end - committed)", "records"))
    for ax, (ys, title, unit) in zip(axes, series, strict=True):
        ax.plot(ts, ys, "-o", markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("minutes")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    save_figure(fig, path)
