"""docs/deploy.md's sizing numbers are derived from the model configs the project ships."""

from __future__ import annotations

import pytest

from pipeline.model.presets import stream_config_dict
from tests.deploy.rendering import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")


def kv_kib_per_token(size: str, bytes_per_value: int) -> int:
    config = stream_config_dict(size)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    values = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim  # K and V
    return values * bytes_per_value // 1024


@pytest.mark.parametrize("size", ["0.6b", "4b", "8b"])
def test_kv_cache_table_matches_the_model_configs(size: str) -> None:
    (row,) = [line for line in DOC.splitlines() if line.startswith("| ") and size.upper() in line.upper()
              and "KiB" in line]
    assert f"{kv_kib_per_token(size, 2)} KiB" in row and f"{kv_kib_per_token(size, 4)} KiB" in row


def test_redis_sizing_states_the_measured_figures() -> None:
    assert "REDIS_BYTES_PER_TOKEN = 4.8" in DOC
    assert "TODO" not in DOC
