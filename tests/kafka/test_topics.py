"""Topics on the real broker: created idempotently, with the documented configuration."""

from __future__ import annotations

from confluent_kafka.admin import ConfigResource

from pipeline.config import Settings
from pipeline.kafka import delete_topics, ensure_topics, make_admin, topic_specs


def _describe(settings: Settings, topic: str) -> dict[str, str]:
    admin = make_admin(settings)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=10)
    return {name: entry.value for name, entry in entries.items()}


def _partitions(settings: Settings, topic: str) -> int:
    return len(make_admin(settings).list_topics(topic, timeout=10).topics[topic].partitions)


def test_fixture_topics_exist_with_the_configured_partitions(settings: Settings) -> None:
    assert _partitions(settings, settings.topic_in) == settings.partitions
    assert _partitions(settings, settings.topic_verdicts) == settings.partitions
    assert _partitions(settings, settings.topic_dlq) == 1


def test_ensure_topics_twice_creates_once_then_reports_existing(settings: Settings) -> None:
    fresh = settings.replace(topic_in=settings.topic_in + ".b", topic_verdicts=settings.topic_verdicts + ".b",
                             topic_dlq=settings.topic_dlq + ".b", partitions=3)
    try:
        first = ensure_topics(fresh)
        second = ensure_topics(fresh)
    finally:
        delete_topics(fresh, [fresh.topic_in, fresh.topic_verdicts, fresh.topic_dlq])
    assert [s.action for s in first] == ["created"] * 3
    assert [s.action for s in second] == ["exists"] * 3
    assert [s.partitions for s in second] == [3, 3, 1]


def test_created_topics_carry_the_spec_configuration(settings: Settings) -> None:
    for spec in topic_specs(settings):
        actual = _describe(settings, spec.name)
        assert {k: actual[k] for k in spec.config} == spec.config


def test_ensure_topics_restores_a_drifted_config(settings: Settings) -> None:
    bigger = settings.replace(max_text_bytes=settings.max_text_bytes * 4)
    statuses = {s.name: s.action for s in ensure_topics(bigger)}
    assert statuses[settings.topic_in] == "updated"
    expected = next(s for s in topic_specs(bigger) if s.name == settings.topic_in).config["max.message.bytes"]
    assert _describe(settings, settings.topic_in)["max.message.bytes"] == expected


def test_existing_partition_count_is_never_changed(settings: Settings) -> None:
    statuses = {s.name: s for s in ensure_topics(settings.replace(partitions=settings.partitions + 2))}
    status = statuses[settings.topic_in]
    assert status.partitions == settings.partitions
    assert "partitions" in status.note
    assert _partitions(settings, settings.topic_in) == settings.partitions


def test_verdict_and_input_topics_are_not_compacted(settings: Settings) -> None:
    # One conversation key carries many verdicts; compaction would keep only the last one.
    for topic in (settings.topic_in, settings.topic_verdicts, settings.topic_dlq):
        assert _describe(settings, topic)["cleanup.policy"] == "delete"
