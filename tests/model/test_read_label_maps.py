"""A model directory's label maps come from its config.json, falling back to the spec's maps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.labels import RISK_LEVELS, LabelMaps, read_label_maps


def test_a_directory_without_config_gets_the_spec_label_maps(tmp_path: Path) -> None:
    assert read_label_maps(tmp_path) == LabelMaps()
    assert read_label_maps(tmp_path).response_risk == RISK_LEVELS == ("Safe", "Unsafe", "Controversial")


def test_maps_in_config_json_win_over_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"query_risk_level_map": {"0": "Safe", "1": "Risky"}}))
    maps = read_label_maps(tmp_path)
    assert maps.query_risk == ("Safe", "Risky")
    assert maps.response_risk == RISK_LEVELS


def test_a_broken_config_json_is_a_user_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"config\.json"):
        read_label_maps(tmp_path)
