"""``guardstream worker stream|generative --model DIR``: run a worker until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pipeline.config import add_settings_arguments, settings_environment, settings_from_args, settings_in_group

_COMMON = (
    *settings_in_group("kafka"), "topic_in", "topic_verdicts", "topic_dlq", "model", "policy_file", "default_policy",
    "device", "precision", "max_context_tokens", "metrics_port", "log_level", "state_dir",
)
_STREAM = (
    "redis_url", "state_ttl_s", "stream_group", "worker_instance", "max_batch_tokens", "max_batch_wait_ms",
    "max_inflight_deltas", "overlap_commits", "live_states_max",
    "progress_every_tokens", "max_text_bytes", "gap_timeout_ms", "kv_cache_bytes", "engine_threads",
    "engine_spin_wait",
    "fault_retry_s", "redis_allow_eviction", "health_grace_s", "health_stall_s",
)
_GENERATIVE = (
    "generative_group", "gen_max_batch", "gen_concurrency", "gen_threads", "max_batch_wait_ms", "max_text_bytes",
    "replication_factor", "gen_start_from",
    "gen_max_message_chars", "gen_max_held_chars", "gen_max_messages", "gen_draft_idle_s",
)


STREAM_DESCRIPTION = """\
Token-level moderation: reads TokenDeltas from guard.in (consumer group --stream-group), scores
every token with Qwen3Guard-Stream on ONNX Runtime (no torch), keeps each conversation's state in
Redis, and writes progress, flag and final verdicts to guard.verdicts in Kafka transactions
(exactly once). Bad input goes to guard.in.dlq. Runs until SIGTERM/SIGINT; /metrics, /healthz
and /readyz on --metrics-port. Topics must exist first ('guardstream topics')."""

STREAM_EPILOG = """\
examples:
  guardstream worker stream --model ./qwen3guard-stream-onnx
  guardstream worker stream --model ./ckpt --device cpu --metrics-port 9401   # a second worker on one host
  guardstream worker stream --model ./export --worker-instance "$POD_NAME" --redis-url redis://redis:6379/0
"""

GENERATIVE_DESCRIPTION = """\
Full-turn rulings: reads guard.in with its own consumer group (--generative-group), assembles each
message, and when a user or assistant message is complete rules it with Qwen3Guard-Gen (torch);
one final verdict per message (source 'generative') goes to guard.verdicts, after the stream
worker's. A new group starts at --gen-start-from (default latest: only conversations sent from
now on); a known group resumes where it committed. Runs until SIGTERM/SIGINT."""

GENERATIVE_EPILOG = """\
examples:
  guardstream worker generative --model ./qwen3guard-gen-0.6b
  guardstream worker generative --model Qwen/Qwen3Guard-Gen-0.6B --device cuda --gen-max-batch 16
  guardstream worker generative --model ./gen --gen-start-from earliest   # also rule what guard.in still holds
"""


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run a stream or generative worker (until SIGTERM/SIGINT)",
                       description="Run a stream worker (token level, ONNX) or a generative worker "
                                   "(full turns, Qwen3Guard-Gen) until SIGTERM/SIGINT.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    stream = kinds.add_parser(
        "stream", help="token-level moderation: guard.in -> Qwen3Guard-Stream (ONNX) -> guard.verdicts",
        description=STREAM_DESCRIPTION, epilog=STREAM_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(stream, _COMMON + _STREAM)
    stream.add_argument(
        "--restart", action="store_true",
        help="supervise: run the worker as a child process and restart it (with back-off) whenever it exits "
             "with code 75 (a dependency kept failing); SIGTERM/SIGINT are forwarded. For hosts without "
             "Kubernetes or systemd",
    )
    stream.set_defaults(func=run_stream)
    gen = kinds.add_parser("generative", help="full-turn rulings with Qwen3Guard-Gen (asynchronous)",
                           description=GENERATIVE_DESCRIPTION, epilog=GENERATIVE_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(gen, _COMMON + _GENERATIVE)
    gen.set_defaults(func=run_generative)


def run_stream(args: argparse.Namespace) -> int:
    if getattr(args, "restart", False):
        from pipeline.logging import configure_logging
        from workers.stream.supervisor import supervise

        settings = settings_from_args(args)
        configure_logging(settings.log_level)
        # The child reads the very settings this command resolved (flags included) from GUARD_* variables.
        return supervise([sys.executable, "-m", "workers.stream"], env={**os.environ, **settings_environment(settings)})
    from workers.stream.app import run_stream_worker

    return run_stream_worker(settings_from_args(args))


def run_generative(args: argparse.Namespace) -> int:
    from workers.generative.app import run_generative_worker

    return int(run_generative_worker(settings_from_args(args)))
