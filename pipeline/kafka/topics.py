"""The three topics of guardstream and how they are created.

- ``guard.in`` (topic_in): ``partitions`` partitions, delete, 1 day. Deltas are transient; a day
  covers a worker outage, after which conversation state lives in Redis. Timestamps are the
  broker's (LogAppendTime): the stream worker times gaps out in log time (docs/guarantees.md).
- ``guard.verdicts`` (topic_verdicts): ``partitions`` partitions, delete, 7 days. Keyed by
  conversation, but one key carries many verdicts, so compaction would drop rulings.
- ``guard.in.dlq`` (topic_dlq): 1 partition, delete, 14 days. Read by people: one partition keeps
  it in arrival order and the long retention leaves time to look.

All use ``replication_factor``; with 3 or more replicas ``min.insync.replicas`` is 2 so an
acknowledged delta or verdict survives a broker loss. ``max.message.bytes`` of ``guard.in``
leaves room above ``max_text_bytes`` (JSON escaping can grow text six-fold) so oversized text
reaches the worker and its DLQ, instead of being refused at the producer; the DLQ carries the
original twice (base64 and text) and so allows more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline.kafka.clients import make_admin

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS
MIB = 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicStatus:
    """What ``ensure_topics`` did to one topic."""

    name: str
    action: str  # created | exists | updated
    partitions: int
    note: str = ""


def topic_specs(settings: Settings) -> list[TopicSpec]:
    rf = settings.replication_factor
    durability = {"min.insync.replicas": "2" if rf >= 3 else "1"}
    in_bytes = max(MIB, 8 * settings.max_text_bytes)
    return [
        TopicSpec(settings.topic_in, settings.partitions, rf, {
            **durability, "cleanup.policy": "delete", "retention.ms": str(DAY_MS),
            "segment.ms": str(HOUR_MS), "max.message.bytes": str(in_bytes),
            # Gap deadlines count in record timestamps (log time): the broker's clock, not a producer's.
            "message.timestamp.type": "LogAppendTime",
        }),
        TopicSpec(settings.topic_verdicts, settings.partitions, rf, {
            **durability, "cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS),
            "segment.ms": str(6 * HOUR_MS),
        }),
        TopicSpec(settings.topic_dlq, 1, rf, {
            **durability, "cleanup.policy": "delete", "retention.ms": str(14 * DAY_MS),
            "max.message.bytes": str(3 * in_bytes),
        }),
    ]


def ensure_topics(
    settings: Settings, specs: list[TopicSpec] | None = None, timeout_s: float = 30.0
) -> list[TopicStatus]:
    """Create missing topics and bring existing ones' configs to the spec; safe to run any number of times.

    Partition counts of existing topics are never changed: adding partitions re-maps
    conversation keys to partitions, which must be a deliberate operation. A mismatch is noted.
    """
    specs = topic_specs(settings) if specs is None else specs
    admin = make_admin(settings)
    existing = _partition_counts(admin, timeout_s)
    statuses = []
    missing = [s for s in specs if s.name not in existing]
    created = _create(admin, missing, timeout_s)
    for spec in specs:
        if spec.name in created:
            statuses.append(TopicStatus(spec.name, "created", spec.partitions))
            continue
        partitions = existing.get(spec.name, spec.partitions)
        note = ""
        if partitions != spec.partitions:
            note = (f"has {partitions} partitions, settings ask for {spec.partitions}; left as is "
                    "(changing it re-maps conversations to partitions)")
        changed = _align_config(admin, spec, timeout_s)
        statuses.append(TopicStatus(spec.name, "updated" if changed else "exists", partitions, note))
    _wait_for_leaders(admin, specs, timeout_s)
    return statuses


def delete_topics(settings: Settings, names: list[str], timeout_s: float = 30.0) -> None:
    """Delete topics that exist (tests clean up after themselves with this); missing ones are ignored."""
    admin = make_admin(settings)
    present = [n for n in names if n in _partition_counts(admin, timeout_s)]
    if not present:
        return
    for name, future in admin.delete_topics(present, operation_timeout=timeout_s, request_timeout=timeout_s).items():
        try:
            future.result()
        except KafkaException as exc:
            error = exc.args[0]
            if not (isinstance(error, KafkaError) and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                raise UserError(f"deleting topic {name} failed: {exc}") from None


def _partition_counts(admin: AdminClient, timeout_s: float) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise UserError(f"cannot reach Kafka to manage topics ({exc}); is it running? try 'guardstream up'") from None
    return {name: len(topic.partitions) for name, topic in metadata.topics.items() if topic.error is None}


def _create(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> set[str]:
    if not specs:
        return set()
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=s.config)
         for s in specs],
        operation_timeout=timeout_s, request_timeout=timeout_s,
    )
    created = set()
    for name, future in futures.items():
        try:
            future.result()
            created.add(name)
        except KafkaException as exc:
            error = exc.args[0]
            # Another process created it between our listing and our request: that is success too.
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise UserError(f"creating topic {name} failed: {exc}") from None
    return created


def _align_config(admin: AdminClient, spec: TopicSpec, timeout_s: float) -> bool:
    differing = _config_drift(admin, spec, timeout_s)
    if not differing:
        return False
    update = ConfigResource(
        ConfigResource.Type.TOPIC, spec.name,
        incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in differing.items()
        ],
    )
    for future in admin.incremental_alter_configs([update], request_timeout=timeout_s).values():
        future.result()
    # The controller accepts the change before the broker applies it: return only once it is in effect.
    deadline = time.monotonic() + timeout_s
    while _config_drift(admin, spec, timeout_s) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def _config_drift(admin: AdminClient, spec: TopicSpec, timeout_s: float) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, spec.name)
    current = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(timeout=timeout_s)
    return {k: v for k, v in spec.config.items() if k not in current or current[k].value != v}


def _wait_for_leaders(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> None:
    """Return once every partition has a leader, so producers right after this do not stall."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s)
        ready = all(
            (t := metadata.topics.get(s.name)) is not None and t.error is None and t.partitions
            and all(p.leader >= 0 for p in t.partitions.values())
            for s in specs
        )
        if ready or time.monotonic() > deadline:
            return
        time.sleep(0.1)
