"""The generative worker starts quietly: no spurious Mistral-regex warning, no library INFO chatter."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.gen.checkpoint import load_gen_model, tokenizer_kwargs
from workers.generative.app import NOISY_LOGGERS, quiet_libraries


@pytest.fixture
def restore_levels() -> Iterator[None]:
    before = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def test_loading_a_qwen3_gen_checkpoint_says_nothing_about_mistral(
    gen_checkpoint: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    load_gen_model(str(gen_checkpoint), device="cpu", dtype="fp32")
    captured = capfd.readouterr()
    assert "incorrect regex pattern" not in captured.err + captured.out


def test_the_mistral_check_is_kept_for_mistral_model_types() -> None:
    assert tokenizer_kwargs({"model_type": "qwen3"}) == {"fix_mistral_regex": False}
    assert tokenizer_kwargs({"model_type": "mistral"}) == {}


def test_library_info_lines_only_at_debug(restore_levels: None) -> None:
    quiet_libraries("INFO")
    assert all(not logging.getLogger(n).isEnabledFor(logging.INFO) for n in NOISY_LOGGERS)
    assert logging.getLogger("aiokafka.consumer").isEnabledFor(logging.WARNING)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    quiet_libraries("DEBUG")
    assert all(logging.getLogger(n).level == logging.NOTSET for n in NOISY_LOGGERS)
