"""Assembles a stream worker from Settings: model, tokenizer, policies, Redis, metrics, signals."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import KafkaException

from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.intake import InputLimits
from pipeline.kafka.clients import make_producer
from pipeline.labels import LabelMaps, read_label_maps
from pipeline.logging import configure_logging
from pipeline.policy import load_policy_book
from pipeline.state.store import StateStore
from pipeline.tokens.files import load_model_tokenizer
from workers.stream.health import WorkerHealth
from workers.stream.metrics import StreamMetrics
from workers.stream.processing import BatchProcessor
from workers.stream.startup import (
    DependencyUnavailable,
    check_eviction_policy,
    fenced_error,
    is_fenced,
    wait_for_kafka,
    wait_for_redis,
    wait_for_topics,
)
from workers.stream.worker import EXIT_DEPENDENCY, ProducerFactory, StreamWorker

log = logging.getLogger("guardstream.stream")


def worker_name(settings: Settings) -> str:
    """The transactional.id: never shared by two live workers.

    A stable name (``worker_instance``) lets a restarted worker fence its crashed predecessor at
    once (init_transactions aborts the open transaction, which otherwise holds back read-committed
    readers of the verdict partitions until ``transaction.timeout.ms``).
    """
    return f"{settings.stream_group}-{settings.worker_instance or f'{socket.gethostname()}-{os.getpid()}'}"


def model_files_dir(model: str) -> Path:
    """Where the checkpoint's (or export's) config.json and tokenizer live."""
    folder = Path(model)
    if folder.is_dir():
        return folder
    from pipeline.model.hub import resolve_model_dir

    return resolve_model_dir(model)


def load_labels_and_tokenizer(model: str) -> tuple[LabelMaps, Any]:
    folder = model_files_dir(model)
    return read_label_maps(folder), load_model_tokenizer(folder)


def build_worker(
    settings: Settings, metrics: StreamMetrics, engine: Any = None, health: WorkerHealth | None = None,
    startup_wait_s: float | None = None, producer_factory: ProducerFactory | None = None,
) -> StreamWorker:
    """Everything but the Kafka clients, which the worker opens in run().

    Waits up to ``startup_wait_s`` (default: ``health_grace_s``) for Redis and Kafka to answer.
    ``producer_factory`` opens the transactional producer (default: make_producer).
    """
    from pipeline.scoring.scorer import Scorer

    if not settings.model:
        raise UserError("no model given: pass --model DIR (a checkpoint or an ONNX export) or set GUARD_MODEL")
    # Short socket timeouts: a Redis that stops answering is a fault the loop retries, never a hang.
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
    wait_s = float(settings.health_grace_s if startup_wait_s is None else startup_wait_s)
    wait_for_redis(client, settings, wait_s)
    check_eviction_policy(client, settings)
    wait_for_kafka(settings, wait_s)
    if engine is None:
        from pipeline.onnx.loader import open_stream_engine

        engine = open_stream_engine(settings.model, settings)
    labels, tokenizer = load_labels_and_tokenizer(settings.model)
    policies = load_policy_book(settings.policy_file or None, settings.default_policy)
    scorer = Scorer(
        tokenizer, labels, policies, engine.model_name,
        progress_every_tokens=settings.progress_every_tokens, max_context_tokens=settings.max_context_tokens,
        max_held_deltas=settings.max_held_deltas, max_held_bytes=settings.max_held_bytes,
    )
    # The store does not retry: the worker's fault loop does (with back-off, health, and SIGTERM checks).
    store = StateStore(client, settings.stream_group, settings.state_ttl_s, metrics.observe_redis)
    name = worker_name(settings)
    processor = BatchProcessor(scorer, engine, store, name, settings.max_text_bytes, settings.gap_timeout_ms,
                               InputLimits.of(settings))
    return StreamWorker(settings, processor, store, metrics, name, health=health,
                        producer_factory=producer_factory or make_producer)


def run_stream_worker(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop``); the current batch is finished and committed first.

    Returns 0 after a stop, EXIT_DEPENDENCY (75) when Kafka, Redis or the engine kept failing or
    did not answer at startup: a supervisor should restart the worker then (docs/deploy.md).
    """
    configure_logging(settings.log_level)
    stop = stop or threading.Event()
    metrics = StreamMetrics()
    health = WorkerHealth(settings.health_stall_s, settings.health_grace_s)
    ops = None
    if settings.metrics_port:
        from pipeline.ops.ports import start_ops_server

        ops = start_ops_server(settings.metrics_port, metrics.registry, alive_check=health.alive,
                               ready_check=health.ready)
        log.info("ops server listening", extra={"port": ops.port})
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
        # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see where a worker hangs.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        try:
            worker = build_worker(settings, metrics, health=health)
        except DependencyUnavailable as exc:
            log.error(str(exc), extra={"exit_code": EXIT_DEPENDENCY})
            return EXIT_DEPENDENCY
        log.info("model loaded", extra={"model": worker.processor.model_name, "worker": worker.name})
        if ops is not None:
            ready_ops = ops
            worker.set_on_subscribed(lambda: ready_ops.set_ready(True))
        if not wait_for_topics(settings, stop):
            return 0
        try:
            return worker.run(stop)
        except KafkaException as exc:
            if is_fenced(exc):
                raise fenced_error(settings, worker.name) from None
            raise
    finally:
        if ops is not None:
            ops.set_ready(False)
            ops.stop()
