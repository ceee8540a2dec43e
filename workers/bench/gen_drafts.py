"""``guardstream bench gen --drafts``: the generative worker's draft work per delta, against the whole-draft rewrite.

One message streamed as N deltas of 3 characters. Measured per delta, CPU only (no Kafka): what
the worker does to accept a delta and produce its changelog record, and how many bytes that
record holds.
- **append** (today): the delta's operation is encoded and applied to the bounded draft; the
  record holds the delta (:mod:`workers.generative.drafts`).
- **whole draft** (the baseline, the worker's previous format, reproduced here): the chunk is
  added to the draft and the whole draft is encoded as the record, per delta: O(draft) per delta,
  so a message costs O(N^2) and its last records pass Kafka's 1 MB limit.
Both run in the same process on the same deltas. Prints a table, writes ``gen-drafts.json``,
``gen-drafts.md`` and ``gen-drafts.png`` into ``--out``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from schemas.messages import TokenDelta
from workers.bench.results import figure, save_figure
from workers.generative.assembly import ConversationDraft, DraftLimits, apply_chunk, chunk_op, encode_op
from workers.generative.drafts import CHANGELOG_RECORD_LIMIT, record_key

BASELINE_MAX_DELTAS = 20_000   # the whole-draft rewrite is quadratic: beyond this it takes minutes
REPEATS = 3


class _OldMessage(msgspec.Struct, omit_defaults=True):
    role: str
    chunks: dict[int, str | None] = msgspec.field(default_factory=dict)
    final_seq: int | None = None
    text: str | None = None
    ruled: bool = False


class _OldDraft(msgspec.Struct, omit_defaults=True):
    tenant: str | None = None
    messages: dict[int, _OldMessage] = msgspec.field(default_factory=dict)


def _deltas(count: int) -> list[TokenDelta]:
    text = "".join(f"w{i % 1000:03d} " for i in range(count * 3 // 5 + 1))
    return [TokenDelta(conversation_id="bench-conversation", message_index=0, role="assistant", seq=seq,
                       text=text[seq * 3:seq * 3 + 3], final=seq == count - 1, tenant="acme")
            for seq in range(count)]


def run_append(deltas: list[TokenDelta]) -> tuple[float, list[int]]:
    limits = DraftLimits()
    draft = ConversationDraft()
    key = b"bench-conversation"
    sizes = []
    start = time.perf_counter()
    for delta in deltas:
        op = chunk_op(delta)
        value = encode_op(op)
        if apply_chunk(draft, op, limits):
            sizes.append(len(record_key(key, draft.next_record)) + len(value))
            draft.next_record += 1
    return time.perf_counter() - start, sizes


def run_whole_draft(deltas: list[TokenDelta]) -> tuple[float, list[int]]:
    encoder = msgspec.msgpack.Encoder()
    draft = _OldDraft()
    key = b"bench-conversation"
    sizes = []
    start = time.perf_counter()
    for delta in deltas:
        assert delta.message_index is not None and delta.seq is not None and delta.role is not None
        message = draft.messages.setdefault(delta.message_index, _OldMessage(role=delta.role))
        message.chunks[delta.seq] = delta.text
        if delta.final:
            message.final_seq = delta.seq
        if message.final_seq is not None and len(message.chunks) == message.final_seq + 1:
            message.text = "".join(message.chunks[s] or "" for s in range(message.final_seq + 1))
            message.chunks = {}
        sizes.append(len(key) + len(encoder.encode(draft)))
    return time.perf_counter() - start, sizes


def _best_of(repeats: int, run: Any, deltas: list[TokenDelta]) -> tuple[float, list[int]]:
    # The fastest of a few runs: other processes on a shared machine only ever add time.
    results = [run(deltas) for _ in range(repeats)]
    return min(r[0] for r in results), results[0][1]


def _row(method: str, count: int, seconds: float, sizes: list[int]) -> dict[str, Any]:
    return {
        "method": method,
        "deltas": count,
        "us_per_delta": round(seconds / count * 1e6, 2),
        "seconds": round(seconds, 3),
        "changelog_bytes": sum(sizes),
        "largest_record_bytes": max(sizes),
        "records_over_1mb": sum(1 for s in sizes if s > CHANGELOG_RECORD_LIMIT),
    }


def run_drafts(out: Path, quick: bool, command: str, live: LiveRun | None = None) -> dict[str, Any]:
    from rich.console import Console

    counts = [1_000, 5_000] if quick else [1_000, 5_000, 20_000, 100_000]
    console = Console(stderr=True)
    load_before = os.getloadavg()
    rows = []
    for count in counts:
        deltas = _deltas(count)
        console.print(f"[dim]bench gen --drafts[/]: {count} deltas")
        rows.append(_row("append (one record per delta)", count, *_best_of(REPEATS, run_append, deltas)))
        if count <= BASELINE_MAX_DELTAS:
            rows.append(_row("baseline: whole draft per delta", count, *_best_of(REPEATS, run_whole_draft, deltas)))
    out.mkdir(parents=True, exist_ok=True)
    live_rows = [run_live(live, out / "worker-live.log")] if live else []
    report = {
        "command": command,
        "machine": f"{platform.system()} {platform.machine()}, CPU, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "delta_chars": 3,
        "load_average": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "rows": rows,
        "live": live_rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gen-drafts.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gen-drafts.md").write_text(render_markdown(report))
    _plot(report, out / "gen-drafts.png")
    Console().print(render_markdown(report))
    console.print(f"[dim]bench gen --drafts[/]: wrote gen-drafts.json, gen-drafts.md and gen-drafts.png into {out}")
    return report


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"`{report['command']}` on {report['machine']}, {report['date']}; one message as N deltas of "
        f"{report['delta_chars']} characters; load average {report['load_average']['before']} -> "
        f"{report['load_average']['after']}",
        "",
        "| method | deltas | µs per delta | changelog bytes | largest record (bytes) | records > 1 MB |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['method']} | {row['deltas']:,} | {row['us_per_delta']} | {row['changelog_bytes']:,} | "
                     f"{row['largest_record_bytes']:,} | {row['records_over_1mb']:,} |")
    if report.get("live"):
        lines += ["", "Live, one generative worker process on the local stack (tiny random Gen model, "
                  "1 partition):", "",
                  "| worker | deltas | seconds to ruling | ms per delta | ms per delta, 10-30% / 70-90% of the deltas "
                  "| changelog records | changelog bytes | largest record (bytes) |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in report["live"]:
            lines.append(f"| {row['worker']} | {row['deltas']:,} | {row['seconds_to_ruling']} | "
                         f"{row['ms_per_delta']} | {row.get('ms_per_delta_first_fifth')} / "
                         f"{row.get('ms_per_delta_last_fifth')} | {row['changelog_records']:,} | "
                         f"{row['changelog_bytes']:,} | "
                         f"{row['largest_record_bytes']:,} |")
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    fig, (left, right) = figure(2, (10, 4))
    for method in dict.fromkeys(r["method"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["method"] == method]
        left.plot([r["deltas"] for r in rows], [r["us_per_delta"] for r in rows], marker="o", label=method)
        right.plot([r["deltas"] for r in rows], [r["changelog_bytes"] / r["deltas"] for r in rows], marker="o",
                   label=method)
    for axis, label in ((left, "µs per delta"), (right, "changelog bytes per delta")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("deltas in the message")
        axis.set_ylabel(label)
        axis.legend()
    fig.suptitle("Generative worker: draft work per delta (3-character deltas)")
    save_figure(fig, path, dpi=110)


# --- live: one generative worker process on the local stack --------------------------------------
def _read_topic(settings: Any, topic: str, timeout_s: float = 120.0) -> list[tuple[bytes, bytes | None]]:
    """Every record of ``topic`` from the beginning (key, value)."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    from pipeline.kafka import make_consumer

    consumer = make_consumer(settings, f"bench-reader-{os.getpid()}-{time.monotonic_ns()}",
                             **{"enable.partition.eof": True})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[tuple[bytes, bytes | None]] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while at_end != set(partitions) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition() or 0)
                continue
            at_end.discard(message.partition() or 0)
            records.append((message.key() or b"", message.value()))
        return records
    finally:
        consumer.close()


def _deltas_done(port: int) -> float | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("guardstream_gen_deltas_total "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _ms_per_delta_between(samples: list[tuple[float, float]], low: float, high: float) -> float | None:
    """Milliseconds per delta while the worker went from ``low`` to ``high`` deltas consumed."""
    start = next((s for s in samples if s[1] >= low), None)
    end = next((s for s in samples if s[1] >= high), None)
    if start is None or end is None or end[1] <= start[1]:
        return None
    return round((end[0] - start[0]) / (end[1] - start[1]) * 1000, 3)


@dataclass(frozen=True)
class LiveRun:
    """A live measurement: ``count`` deltas through a worker (from ``worker_pythonpath``, default this tree)."""

    settings: Any
    model_dir: str
    count: int
    worker_pythonpath: str
    say: Any


def run_live(run: LiveRun, log_path: Path) -> dict[str, Any]:
    """Seconds from the first of ``count`` deltas to the message's ruling, and the changelog it left."""
    import subprocess
    import sys
    import uuid

    from pipeline.kafka import delete_topics, ensure_topics, make_consumer, make_producer
    from pipeline.ops.ports import free_port, readyz_status
    from schemas.messages import encode

    settings, model_dir, count, worker_pythonpath, say = (run.settings, run.model_dir, run.count,
                                                          run.worker_pythonpath, run.say)
    suffix = uuid.uuid4().hex[:10]
    live = settings.replace(topic_in=f"bench-drafts-in-{suffix}", topic_verdicts=f"bench-drafts-verdicts-{suffix}",
                            topic_dlq=f"bench-drafts-dlq-{suffix}", generative_group=f"bench-drafts-{suffix}",
                            partitions=1, model=str(Path(model_dir).resolve()))
    changelog = f"{live.generative_group}-conversations-changelog"
    ensure_topics(live)
    port = free_port()
    flags = {"--kafka-bootstrap": live.kafka_bootstrap, "--topic-in": live.topic_in,
             "--topic-verdicts": live.topic_verdicts, "--topic-dlq": live.topic_dlq,
             "--generative-group": live.generative_group, "--model": live.model, "--max-context-tokens": "1024",
             "--device": "cpu", "--gen-threads": "1", "--metrics-port": str(port), "--log-level": "WARNING"}
    env = {**os.environ, "PYTHONPATH": worker_pythonpath or os.getcwd()}
    # -m puts the working directory first on sys.path: run from the tree whose worker is measured.
    log_file = open(log_path, "ab")   # noqa: SIM115 (closed in finally, after the process)
    worker = subprocess.Popen([sys.executable, "-m", "workers.generative", *[x for kv in flags.items() for x in kv]],
                              env=env, cwd=worker_pythonpath or None, stdout=log_file, stderr=subprocess.STDOUT)
    verdicts = make_consumer(live, f"bench-verdicts-{suffix}")
    try:
        deadline = time.monotonic() + 300
        while True:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the generative worker did not get ready (exit code {worker.returncode})")
            if readyz_status(port) == 200:
                break
            time.sleep(1)
        verdicts.subscribe([live.topic_verdicts])
        deltas = _deltas(count)
        for delta in deltas:
            delta.conversation_id = f"bench-{suffix}"
        say(f"live: producing {count} deltas to a running worker ({worker_pythonpath or 'current'})")
        producer = make_producer(live)
        started = time.monotonic()
        for delta in deltas:
            producer.produce(live.topic_in, key=delta.conversation_id, value=encode(delta))
            producer.poll(0)
        producer.flush(60)
        produced_s = time.monotonic() - started
        ruled_s = None
        samples: list[tuple[float, float]] = []     # (seconds, deltas consumed): is the cost per delta flat?
        while time.monotonic() - started < 1800:
            message = verdicts.poll(1.0)
            if message is not None and message.error() is None:
                ruled_s = time.monotonic() - started
                break
            if worker.poll() is not None:
                break
            done = _deltas_done(port)
            if done is not None:
                samples.append((time.monotonic() - started, done))
        worker.terminate()
        worker.wait(120)
        records = _read_topic(live, changelog)
        sizes = [len(k) + len(v or b"") for k, v in records if v is not None]
        return {
            "worker": "previous (" + worker_pythonpath + ")" if worker_pythonpath else "append (current)",
            "deltas": count,
            "produce_s": round(produced_s, 2),
            "seconds_to_ruling": round(ruled_s, 1) if ruled_s is not None else None,
            "ms_per_delta": round(ruled_s / count * 1000, 3) if ruled_s is not None else None,
            "changelog_records": len(sizes),
            "changelog_bytes": sum(sizes),
            "largest_record_bytes": max(sizes, default=0),
            "ms_per_delta_first_fifth": _ms_per_delta_between(samples, 0.1 * count, 0.3 * count),
            "ms_per_delta_last_fifth": _ms_per_delta_between(samples, 0.7 * count, 0.9 * count),
        }
    finally:
        verdicts.close()
        log_file.close()
        if worker.poll() is None:
            worker.kill()
        delete_topics(live, [live.topic_in, live.topic_verdicts, live.topic_dlq, changelog,
                             f"{live.generative_group}-__assignor-__leader"])
