"""Settings: CLI flag over environment over default, and Kafka security pass-through."""

from __future__ import annotations

import argparse

import pytest

from pipeline.config import ConfigError, add_settings_arguments, load_settings, settings_from_args


def _parse(argv: list[str], names: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, names)
    return parser.parse_args(argv)


def test_flag_beats_environment_which_beats_default() -> None:
    names = ["kafka_bootstrap", "partitions", "topic_in"]
    env = {"GUARD_KAFKA_BOOTSTRAP": "env:1", "GUARD_PARTITIONS": "3"}
    settings = settings_from_args(_parse(["--kafka-bootstrap", "flag:2"], names), environ=env)
    assert settings.kafka_bootstrap == "flag:2"
    assert settings.partitions == 3
    assert settings.topic_in == "guard.in"


def test_boolean_settings_read_common_spellings_from_the_environment() -> None:
    assert load_settings({"GUARD_REDIS_ALLOW_EVICTION": "yes"}).redis_allow_eviction is True
    assert load_settings({"GUARD_REDIS_ALLOW_EVICTION": "0"}).redis_allow_eviction is False
    assert settings_from_args(_parse(["--redis-allow-eviction"], ["redis_allow_eviction"]),
                              environ={}).redis_allow_eviction is True


@pytest.mark.parametrize(("env", "message"), [
    ({"GUARD_PARTITIONS": "eight"}, "GUARD_PARTITIONS='eight' is not a valid int"),
    ({"GUARD_DEVICE": "tpu"}, "must be one of auto, cpu, cuda"),
    ({"GUARD_REDIS_ALLOW_EVICTION": "maybe"}, "GUARD_REDIS_ALLOW_EVICTION"),
])
def test_a_bad_environment_value_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_kafka_config_passes_security_settings_through() -> None:
    settings = load_settings({
        "GUARD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "GUARD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "GUARD_KAFKA_SASL_USERNAME": "u", "GUARD_KAFKA_SASL_PASSWORD": "p",
        "GUARD_KAFKA_SSL_CA_LOCATION": "/ca.pem", "GUARD_KAFKA_EXTRA": "client.id=gs, linger.ms=7",
    })
    conf = settings.kafka_config(**{"linger.ms": 9})
    assert conf == {
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "u", "sasl.password": "p", "ssl.ca.location": "/ca.pem", "client.id": "gs",
        "linger.ms": 9,
    }


def test_plaintext_config_carries_no_security_keys() -> None:
    assert load_settings({}).kafka_config() == {"bootstrap.servers": "127.0.0.1:9092"}


def test_malformed_extra_properties_say_how_to_write_them() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_settings({"GUARD_KAFKA_EXTRA": "linger.ms"}).kafka_config()


def test_client_factories_keep_pipeline_defaults_and_security() -> None:
    from pipeline.kafka.clients import consumer_config, producer_config

    settings = load_settings({"GUARD_KAFKA_SECURITY_PROTOCOL": "SSL", "GUARD_KAFKA_SSL_CA_LOCATION": "/ca"})
    producer = producer_config(settings, transactional_id="tx-1")
    assert producer["enable.idempotence"] is True and producer["transactional.id"] == "tx-1"
    assert producer["security.protocol"] == "SSL" and producer["ssl.ca.location"] == "/ca"
    consumer = consumer_config(settings, "g", from_beginning=False, **{"enable.auto.commit": True})
    assert consumer["auto.offset.reset"] == "latest" and consumer["enable.auto.commit"] is True
    assert consumer["isolation.level"] == "read_committed" and consumer["security.protocol"] == "SSL"
