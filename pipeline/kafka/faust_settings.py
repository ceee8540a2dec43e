"""The Kafka settings of a faust app (the generative worker), translated from the same librdkafka
properties every other client gets (:meth:`pipeline.config.Settings.kafka_config`).

faust talks to Kafka through aiokafka, which has no pass-through for librdkafka properties. So the
translation is explicit: bootstrap and security (also when ``kafka_extra`` sets them), and the few
``kafka_extra`` keys with an aiokafka equivalent. Any other ``kafka_extra`` key is refused with an
error naming it, instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Settings
from pipeline.errors import UserError

# librdkafka properties that become the credentials (or the broker list) below.
_CONNECTION_KEYS = frozenset({
    "bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username",
    "sasl.password", "ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.key.password",
})
# librdkafka millisecond properties with a faust setting (in seconds) of the same meaning.
_SECONDS_SETTINGS = {
    "session.timeout.ms": "broker_session_timeout",
    "heartbeat.interval.ms": "broker_heartbeat_interval",
    "request.timeout.ms": "broker_request_timeout",
    "max.poll.interval.ms": "broker_max_poll_interval",
}
_PLAIN_SETTINGS = {"client.id": "broker_client_id"}
SUPPORTED_KEYS = tuple(sorted(_CONNECTION_KEYS | set(_SECONDS_SETTINGS) | set(_PLAIN_SETTINGS)))


def faust_kafka_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App``: ``broker``, ``broker_credentials`` and the translated extras."""
    conf = settings.kafka_config()
    unsupported = sorted(set(conf) - set(SUPPORTED_KEYS))
    if unsupported:
        raise UserError(
            f"kafka_extra sets {', '.join(unsupported)}, which the generative worker (faust/aiokafka) cannot "
            f"apply; it understands only {', '.join(SUPPORTED_KEYS)}. Give the generative worker its own "
            "GUARD_KAFKA_EXTRA without those keys (or leave them out)."
        )
    out: dict[str, Any] = {
        "broker": [f"kafka://{host.strip()}" for host in str(conf["bootstrap.servers"]).split(",")],
        "broker_credentials": faust_credentials(conf),
    }
    for key, name in _SECONDS_SETTINGS.items():
        if key in conf:
            out[name] = _milliseconds(key, conf[key]) / 1000
    for key, name in _PLAIN_SETTINGS.items():
        if key in conf:
            out[name] = str(conf[key])
    return out


def faust_credentials(conf: dict[str, Any]) -> Any:
    """faust credentials for the librdkafka security properties in ``conf`` (None: PLAINTEXT)."""
    import ssl

    import faust

    protocol = str(conf.get("security.protocol", "PLAINTEXT")).upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol not in ("SSL", "SASL_SSL", "SASL_PLAINTEXT"):
        raise UserError(f"security.protocol {protocol!r} is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=conf.get("ssl.ca.location") or None)
        if conf.get("ssl.certificate.location"):
            context.load_cert_chain(conf["ssl.certificate.location"], conf.get("ssl.key.location") or None,
                                    conf.get("ssl.key.password") or None)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    mechanism = conf.get("sasl.mechanism") or conf.get("sasl.mechanisms") or "PLAIN"
    return faust.SASLCredentials(username=conf.get("sasl.username", ""), password=conf.get("sasl.password", ""),
                                 mechanism=mechanism, ssl_context=context)


def _milliseconds(key: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"kafka_extra {key}={value!r} must be a whole number of milliseconds") from None
