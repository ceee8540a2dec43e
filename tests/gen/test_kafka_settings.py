"""The generative worker's faust app gets the Kafka settings every other client gets: security and
the kafka_extra keys aiokafka has an equivalent for are translated; any other kafka_extra key is
refused by name instead of being silently ignored."""

from __future__ import annotations

import pytest

from pipeline.config import load_settings
from pipeline.errors import UserError
from pipeline.kafka.faust_settings import faust_kafka_settings


def test_kafka_extra_timeouts_and_client_id_reach_the_faust_app() -> None:
    settings = load_settings({"GUARD_KAFKA_BOOTSTRAP": "a:9092, b:9093",
                              "GUARD_KAFKA_EXTRA": "session.timeout.ms=6000,heartbeat.interval.ms=500,client.id=gen"})
    got = faust_kafka_settings(settings)
    assert got["broker"] == ["kafka://a:9092", "kafka://b:9093"]
    assert got["broker_credentials"] is None
    assert got["broker_session_timeout"] == 6.0
    assert got["broker_heartbeat_interval"] == 0.5
    assert got["broker_client_id"] == "gen"


def test_sasl_settings_and_a_security_protocol_from_kafka_extra_become_credentials() -> None:
    settings = load_settings({
        "GUARD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "GUARD_KAFKA_SASL_USERNAME": "u",
        "GUARD_KAFKA_SASL_PASSWORD": "p", "GUARD_KAFKA_EXTRA": "security.protocol=SASL_PLAINTEXT",
    })
    credentials = faust_kafka_settings(settings)["broker_credentials"]
    assert type(credentials).__name__ == "SASLCredentials"
    assert (credentials.username, credentials.password, credentials.mechanism.value) == ("u", "p", "SCRAM-SHA-512")


def test_a_kafka_extra_key_faust_cannot_apply_is_refused_by_name() -> None:
    settings = load_settings({"GUARD_KAFKA_EXTRA": "linger.ms=5,session.timeout.ms=6000"})
    with pytest.raises(UserError, match=r"kafka_extra sets linger\.ms.*GUARD_KAFKA_EXTRA"):
        faust_kafka_settings(settings)


def test_a_non_numeric_timeout_is_refused() -> None:
    with pytest.raises(UserError, match=r"session\.timeout\.ms='soon' must be a whole number"):
        faust_kafka_settings(load_settings({"GUARD_KAFKA_EXTRA": "session.timeout.ms=soon"}))
