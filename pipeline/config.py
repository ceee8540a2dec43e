"""The one settings object of guardstream.

Every option is a field of :class:`Settings`. Its environment variable is ``GUARD_`` + the
field name in upper case and its CLI flag is ``--`` + the field name with dashes, so the three
spellings can never drift apart. Precedence: CLI flag > environment > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "GUARD_"


def _opt(help_text: str, group: str, choices: Sequence[str] | None = None) -> dict[str, Any]:
    return {"help": help_text, "group": group, "choices": tuple(choices) if choices else None}


@dataclass(frozen=True)
class Settings:
    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = field(
        default="127.0.0.1:9092", metadata=_opt("Kafka bootstrap servers (host:port,...)", "kafka")
    )
    kafka_security_protocol: str = field(
        default="PLAINTEXT",
        metadata=_opt(
            "Kafka security.protocol", "kafka", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
        ),
    )
    kafka_sasl_mechanism: str = field(
        default="", metadata=_opt("Kafka sasl.mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)", "kafka")
    )
    kafka_sasl_username: str = field(default="", metadata=_opt("Kafka SASL username", "kafka"))
    kafka_sasl_password: str = field(default="", metadata=_opt("Kafka SASL password", "kafka"))
    kafka_ssl_ca_location: str = field(default="", metadata=_opt("CA bundle for Kafka TLS", "kafka"))
    kafka_ssl_certificate_location: str = field(
        default="", metadata=_opt("Client certificate for Kafka mTLS", "kafka")
    )
    kafka_ssl_key_location: str = field(default="", metadata=_opt("Client key for Kafka mTLS", "kafka"))
    kafka_extra: str = field(
        default="",
        metadata=_opt("Extra librdkafka properties passed through, 'key=value,key=value'", "kafka"),
    )
    topic_in: str = field(default="guard.in", metadata=_opt("Topic of incoming TokenDeltas", "topics"))
    topic_verdicts: str = field(default="guard.verdicts", metadata=_opt("Topic of Verdicts", "topics"))
    topic_dlq: str = field(default="guard.in.dlq", metadata=_opt("Dead-letter topic for bad input", "topics"))
    partitions: int = field(default=8, metadata=_opt("Partitions of the input topic", "topics"))
    replication_factor: int = field(default=1, metadata=_opt("Replication factor of created topics", "topics"))
    # --- Redis -------------------------------------------------------------------------
    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata=_opt("Redis URL (rediss:// for TLS)", "redis"),
    )
    state_ttl_s: int = field(
        default=86400, metadata=_opt("Idle conversations' state expires after this many seconds", "redis")
    )
    # --- local stack ---------------------------------------------------------------------
    state_dir: str = field(
        default=".guardstream",
        metadata=_opt("Directory for the local stack's data, logs and PIDs", "stack"),
    )
    kafka_port: int = field(default=9092, metadata=_opt("Port of the local Kafka broker", "stack"))
    kafka_controller_port: int = field(
        default=9093, metadata=_opt("Port of the local Kafka KRaft controller", "stack")
    )
    redis_port: int = field(default=6379, metadata=_opt("Port of the local Redis", "stack"))
    # --- model and policy ----------------------------------------------------------------
    model: str = field(
        default="",
        metadata=_opt("Model: a local directory (checkpoint or ONNX export) or a Hugging Face id", "model"),
    )
    policy_file: str = field(
        default="", metadata=_opt("YAML/JSON file of per-tenant policies (strict/loose, categories)", "model")
    )
    default_policy: str = field(
        default="strict", metadata=_opt("Policy for tenants not in the policy file", "model", ["strict", "loose"])
    )
    device: str = field(
        default="auto", metadata=_opt("Where to run the model", "model", ["auto", "cpu", "cuda"])
    )
    precision: str = field(
        default="auto",
        metadata=_opt("Numeric precision (auto: fp32 on CPU, fp16/bf16 on GPU)", "model",
                      ["auto", "fp32", "fp16", "bf16"]),
    )
    max_context_tokens: int = field(
        default=8192, metadata=_opt("Longest conversation, in tokens, the model is run on", "model")
    )
    # --- stream worker -------------------------------------------------------------------
    stream_group: str = field(
        default="guardstream-stream", metadata=_opt("Consumer group of stream workers", "worker")
    )
    worker_instance: str = field(
        default="",
        metadata=_opt("Stable name of this stream worker (e.g. the pod name): a restarted worker with the same "
                      "name aborts its crashed predecessor's open Kafka transaction at once. Never run two "
                      "live workers with one name. Empty: hostname-pid", "worker"),
    )
    generative_group: str = field(
        default="guardstream-generative", metadata=_opt("Consumer group of generative workers", "worker")
    )
    max_batch_tokens: int = field(
        default=1024, metadata=_opt("Most new tokens in one engine step across conversations", "worker")
    )
    max_batch_wait_ms: int = field(
        default=10, metadata=_opt("Longest wait to fill a micro-batch, milliseconds", "worker")
    )
    max_inflight_deltas: int = field(
        default=5000, metadata=_opt("Most deltas polled into one batch (also capped by max_batch_tokens); with "
                                    "overlapped commits at most two batches are in flight", "worker")
    )
    overlap_commits: bool = field(
        default=True,
        metadata=_opt("Judge the next micro-batch while the previous one's Kafka transaction commits (off: "
                      "commit, then judge; exactly-once either way, docs/guarantees.md)", "worker"),
    )
    live_states_max: int = field(
        default=10_000,
        metadata=_opt("Conversation states kept decoded in memory between micro-batches, besides the newest "
                      "batch's (the rest are read from Redis when their conversation speaks again; each takes "
                      "about twice its Redis size, docs/deploy.md)", "worker"),
    )
    progress_every_tokens: int = field(
        default=16, metadata=_opt("Emit a progress watermark every N scored tokens (0: only at final)", "worker")
    )
    max_text_bytes: int = field(
        default=65536, metadata=_opt("Largest accepted text in one delta, bytes (larger: DLQ)", "worker")
    )
    gap_timeout_ms: int = field(
        default=30000, metadata=_opt("How long a seq gap is held before it is reported to the DLQ", "worker")
    )
    max_conversation_messages: int = field(
        default=10_000,
        metadata=_opt("Most messages in one conversation: deltas of a later message_index go to the DLQ", "worker"),
    )
    max_held_deltas: int = field(
        default=1_000,
        metadata=_opt("Most out-of-order deltas one conversation may hold while waiting for a gap (more: DLQ)",
                      "worker"),
    )
    max_held_bytes: int = field(
        default=1024 * 1024,
        metadata=_opt("Most bytes of out-of-order deltas one conversation may hold (more: DLQ)", "worker"),
    )
    kv_cache_bytes: int = field(
        default=2 * 1024**3, metadata=_opt("Byte budget of the in-worker KV cache (LRU)", "worker")
    )
    fault_retry_s: int = field(
        default=120,
        metadata=_opt("Stream worker: how long a failing Kafka, Redis or model engine is retried (nothing is "
                      "committed meanwhile) before the worker exits with code 75", "worker"),
    )
    redis_allow_eviction: bool = field(
        default=False,
        metadata=_opt("Stream worker: start even when Redis' maxmemory-policy may evict keys (evicted "
                      "conversation state is lost without notice); the default refuses anything but noeviction",
                      "worker"),
    )
    engine_threads: int = field(
        default=0,
        metadata=_opt("ONNX Runtime intra-op threads of one worker (0: chosen per device and model size: one on "
                      "CUDA and for small models, else all usable cores; with N workers on one machine give each "
                      "cores/N, docs/deploy.md)", "worker"),
    )
    engine_spin_wait: bool = field(
        default=False,
        metadata=_opt("Let ONNX Runtime's intra-op threads spin between ops instead of sleeping (a little lower "
                      "latency per model call, a busy core meanwhile; off suits shared hosts)", "worker"),
    )
    gen_start_from: str = field(
        default="latest",
        metadata=_opt("Generative worker: where a NEW consumer group starts reading guard.in (latest: only "
                      "conversations sent from now on; earliest: everything the topic still retains). A group "
                      "with committed offsets always resumes from them", "worker", ["latest", "earliest"]),
    )
    gen_max_batch: int = field(default=8, metadata=_opt("Generative worker: largest batch", "worker"))
    gen_concurrency: int = field(
        default=1, metadata=_opt("Generative worker: model calls in flight at once", "worker")
    )
    gen_threads: int = field(
        default=0,
        metadata=_opt("Generative worker: torch CPU threads (0: torch's default, one per core; 1 on busy hosts)",
                      "worker"),
    )
    gen_max_message_chars: int = field(
        default=131072,
        metadata=_opt("Generative worker: characters kept per message (first and last half); the middle of a "
                      "longer message is elided and the ruling says so (truncated_tokens)", "worker"),
    )
    gen_max_messages: int = field(
        default=1024, metadata=_opt("Generative worker: messages held per conversation (more: DLQ)", "worker")
    )
    gen_max_held_chars: int = field(
        default=262144,
        metadata=_opt("Generative worker: characters of chunks held ahead of a missing seq, per message "
                      "(more: DLQ)", "worker"),
    )
    gen_draft_idle_s: int = field(
        default=3600,
        metadata=_opt("Generative worker: a conversation without deltas for this many seconds is dropped "
                      "(its unfinished messages are logged and counted)", "worker"),
    )
    # --- gateway (docs/gateway.md) ----------------------------------------------------------
    upstream: str = field(
        default="", metadata=_opt("Gateway: base URL of the OpenAI-compatible upstream, e.g. http://127.0.0.1:8000/v1",
                                  "gateway")
    )
    listen: str = field(default="127.0.0.1:8080", metadata=_opt("Gateway: address to serve on, HOST:PORT", "gateway"))
    gateway_mode: str = field(
        default="guarded",
        metadata=_opt("Gateway: guarded releases only text the guard has cleared; optimistic streams replies at "
                      "once and retracts on a block (streaming requests only)", "gateway", ["guarded", "optimistic"]),
    )
    gateway_tenant: str = field(
        default="", metadata=_opt("Gateway: tenant of its conversations (selects the policy; empty: default)",
                                  "gateway")
    )
    gateway_tenant_header: str = field(
        default="", metadata=_opt("Gateway: trusted request header naming the tenant, e.g. X-Guardstream-Tenant "
                                  "(empty: off)", "gateway")
    )
    gateway_api_keys: str = field(
        default="", metadata=_opt("Gateway: YAML/JSON file mapping API keys to tenants; set, every request needs "
                                  "a listed key (empty: no key check)", "gateway")
    )
    gateway_upstream_api_key: str = field(
        default="", metadata=_opt("Gateway: API key sent to the upstream (empty: the client's Authorization "
                                  "header, or none with --gateway-api-keys)", "gateway")
    )
    gateway_fail_open_tenants: str = field(
        default="", metadata=_opt("Gateway: comma-separated tenants that fail OPEN (unjudged text is passed) when "
                                  "Kafka or the workers do not answer in time; everyone else fails closed", "gateway")
    )
    gateway_max_requests: int = field(
        default=1000, metadata=_opt("Gateway: most chat completions in flight at once; more get HTTP 429", "gateway")
    )
    gateway_verdict_timeout_ms: int = field(
        default=10000,
        metadata=_opt("Gateway: longest wait, ms, for the prompt's verdict and for the reply's final verdict after "
                      "the upstream's end; later: fail closed (503)", "gateway"),
    )
    gateway_upstream_timeout_ms: int = field(
        default=60000, metadata=_opt("Gateway: connect/read timeout towards the upstream, milliseconds", "gateway")
    )
    gateway_max_reply_bytes: int = field(
        default=1024 * 1024,
        metadata=_opt("Gateway: largest reply held for judging; past it the upstream is stopped (finish 'length')",
                      "gateway"),
    )
    gateway_ui: bool = field(
        default=False,
        metadata=_opt("Gateway: also serve the live dashboard at /ui (every tenant's verdicts, to whoever reaches "
                      "the gateway: only where clients may see them, docs/dashboard.md)", "gateway"),
    )
    # --- dashboard (docs/dashboard.md) ----------------------------------------------------------
    dashboard_listen: str = field(
        default="127.0.0.1:8090", metadata=_opt("Dashboard: address to serve on, HOST:PORT", "dashboard")
    )
    dashboard_show_text: bool = field(
        default=False,
        metadata=_opt("Dashboard: read guard.in (own reader, never committing) to show message text; off: "
                      "verdicts only, tokens shown as positions", "dashboard"),
    )
    dashboard_start: str = field(
        default="latest",
        metadata=_opt("Dashboard: where the live view starts reading (latest: from now; earliest: replay what the "
                      "topics retain)", "dashboard", ["latest", "earliest"]),
    )
    dashboard_max_conversations: int = field(
        default=200, metadata=_opt("Dashboard: conversations kept in memory (least recently updated dropped first)",
                                   "dashboard")
    )
    dashboard_max_messages: int = field(
        default=32, metadata=_opt("Dashboard: messages kept per conversation (the latest)", "dashboard")
    )
    dashboard_max_message_chars: int = field(
        default=8192, metadata=_opt("Dashboard: characters of text kept per message (past it: positions only)",
                                    "dashboard")
    )
    # --- operations ----------------------------------------------------------------------
    metrics_port: int = field(
        default=9400, metadata=_opt("Port of /metrics, /healthz and /readyz (0: off)", "ops")
    )
    health_grace_s: int = field(
        default=30, metadata=_opt("/healthz fails once Kafka, Redis or the model engine has failed this long", "ops")
    )
    health_stall_s: int = field(
        default=120,
        metadata=_opt("/healthz fails when the worker loop has made no progress this long with work in hand", "ops"),
    )
    log_level: str = field(
        default="INFO", metadata=_opt("Log level", "ops", ["DEBUG", "INFO", "WARNING", "ERROR"])
    )

    # ---------------------------------------------------------------------------------------
    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka properties for any client: bootstrap plus security pass-through."""
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap}
        if self.kafka_security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.kafka_security_protocol
        pairs = {
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "sasl.password": self.kafka_sasl_password,
            "ssl.ca.location": self.kafka_ssl_ca_location,
            "ssl.certificate.location": self.kafka_ssl_certificate_location,
            "ssl.key.location": self.kafka_ssl_key_location,
        }
        conf.update({k: v for k, v in pairs.items() if v})
        conf.update(parse_kv_list(self.kafka_extra))
        conf.update(overrides)
        return conf

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def parse_kv_list(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise ConfigError(f"kafka_extra item {item!r} is not key=value; write e.g. 'linger.ms=5'")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message says how to fix it."""


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def cli_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def settings_environment(settings: Settings) -> dict[str, str]:
    """GUARD_* variables that make load_settings() in a child process return ``settings``."""
    env = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        env[env_var(f.name)] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return env


def settings_fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(Settings)


def settings_in_group(group: str) -> tuple[str, ...]:
    """Names of the settings of one group, in declaration order (e.g. ``kafka``: bootstrap and security)."""
    return tuple(f.name for f in settings_fields() if f.metadata["group"] == group)


def _coerce(f: dataclasses.Field[Any], raw: str, source: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
    except ValueError:
        raise ConfigError(f"{source}={raw!r} is not a valid {kind}") from None
    choices = f.metadata.get("choices")
    if choices and raw not in choices:
        raise ConfigError(f"{source}={raw!r} must be one of {', '.join(choices)}")
    return raw


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Defaults, then the environment, then explicit overrides (parsed CLI flags)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in settings_fields():
        var = env_var(f.name)
        if var in env:
            values[f.name] = _coerce(f, env[var], var)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    return Settings(**values)


def add_settings_arguments(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add CLI flags for the named settings; their defaults come from env/defaults later."""
    by_name = {f.name: f for f in settings_fields()}
    for name in names:
        f = by_name[name]
        default = f.default
        help_text = f"{f.metadata['help']} [env {env_var(name)}; default {default!r}]"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind == "bool":
            parser.add_argument(
                cli_flag(name), dest=name, default=None, action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            choices = f.metadata.get("choices")
            # With choices the metavar lists them ({cpu,cuda,...}), so --help shows the values.
            parser.add_argument(
                cli_flag(name), dest=name, default=None, type=int if kind == "int" else str,
                choices=choices, help=help_text, metavar="{" + ",".join(choices) + "}" if choices else name.upper(),
            )


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    names = {f.name for f in settings_fields()}
    return load_settings(environ, {k: v for k, v in vars(args).items() if k in names})


def settings_markdown_table() -> str:
    """The README's configuration table, generated so that it cannot drift from the code."""
    rows = ["| env var | CLI flag | default | meaning |", "|---|---|---|---|"]
    for f in settings_fields():
        default = f.default if f.default != "" else "(empty)"
        rows.append(f"| `{env_var(f.name)}` | `{cli_flag(f.name)}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(rows)


def state_path(settings: Settings) -> Path:
    return Path(settings.state_dir).resolve()
