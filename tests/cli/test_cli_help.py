"""--help lists every flag's values and defaults; `config` takes flags and never prints a secret."""

from __future__ import annotations

import argparse

import pytest

from workers.cli import build_parser, main


def _subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("kind", ["stream", "generative"])
def test_worker_help_has_a_description_examples_and_the_values_of_choice_flags(kind: str) -> None:
    text = _subparser("worker", kind).format_help()
    assert "examples:" in text and f"guardstream worker {kind} --model" in text
    assert "guard.in" in text.split("options:")[0]   # a description before the options
    for values in ("{auto,cpu,cuda}", "{auto,fp32,fp16,bf16}", "{strict,loose}", "{DEBUG,INFO,WARNING,ERROR}"):
        assert values in text


def test_generative_worker_start_position_is_a_documented_setting_defaulting_to_latest() -> None:
    text = _subparser("worker", "generative").format_help()
    assert "--gen-start-from {latest,earliest}" in text
    assert "default 'latest'" in text


def test_init_random_shows_the_arch_default() -> None:
    assert "(default: stream)" in _subparser("model", "init-random").format_help()


def test_config_accepts_settings_flags_and_masks_every_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUARD_REDIS_URL", "redis://:hunter2@redis:6379/0")
    monkeypatch.setenv("GUARD_KAFKA_EXTRA", "sasl.oauthbearer.client.secret=topsecret,linger.ms=5")
    assert main(["config", "--kafka-sasl-password", "pa55word", "--log-level", "DEBUG",
                 "--kafka-bootstrap", "kafka:9092"]) == 0
    out = capsys.readouterr().out
    for secret in ("hunter2", "topsecret", "pa55word"):
        assert secret not in out
    assert "redis://:***@redis:6379/0" in out
    assert "linger.ms=5" in out
    assert "'DEBUG'" in out and "'kafka:9092'" in out


def test_url_password_masking_keeps_urls_without_one() -> None:
    from workers.commands.config import masked

    assert masked("redis_url", "redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert masked("redis_url", "rediss://user:p@ss:w0rd@h:6380/1") == "rediss://user:***@h:6380/1"
