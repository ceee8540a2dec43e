"""Qwen3Guard label maps (docs/model.md §3). Index order matters: risk 0 Safe, 1 Unsafe, 2 Controversial.

Checkpoints may carry their own maps in config.json; :meth:`LabelMaps.from_config` reads them and
falls back to these defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.jsonfiles import read_json_object

RISK_LEVELS: tuple[str, ...] = ("Safe", "Unsafe", "Controversial")
RESPONSE_CATEGORIES: tuple[str, ...] = (
    "Violent", "Sexual Content", "Self-Harm", "Political", "PII", "Copyright", "Illegal Acts", "Unethical",
)
QUERY_CATEGORIES: tuple[str, ...] = (*RESPONSE_CATEGORIES, "Jailbreak")

# Short head label -> the long name used by Gen, the eval code and our Verdicts.
LONG_NAMES: Mapping[str, str] = {
    "Violent": "Violent",
    "Sexual Content": "Sexual Content or Sexual Acts",
    "Self-Harm": "Suicide & Self-Harm",
    "Political": "Politically Sensitive Topics",
    "PII": "PII",
    "Copyright": "Copyright Violation",
    "Illegal Acts": "Non-violent Illegal Acts",
    "Unethical": "Unethical Acts",
    "Jailbreak": "Jailbreak",
}
LONG_CATEGORY_NAMES: tuple[str, ...] = tuple(LONG_NAMES.values())


def risk_name(label: str) -> str:
    """'Controversial' -> 'controversial' (the Verdict's spelling)."""
    return label.lower()


def long_category(label: str) -> str:
    """Long name for a head label; already-long names pass through."""
    return LONG_NAMES.get(label, label)


def _index_map(raw: Any, default: tuple[str, ...], field_name: str) -> tuple[str, ...]:
    if raw is None:
        return default
    if not isinstance(raw, Mapping):
        raise ValueError(f"config.json {field_name} must be an object like {{\"0\": \"Safe\"}}")
    try:
        items = sorted((int(k), str(v)) for k, v in raw.items())
    except ValueError:
        raise ValueError(f"config.json {field_name} keys must be integers as strings") from None
    if [i for i, _ in items] != list(range(len(items))):
        raise ValueError(f"config.json {field_name} keys must be 0..N-1 without gaps")
    return tuple(v for _, v in items)


@dataclass(frozen=True)
class LabelMaps:
    response_risk: tuple[str, ...] = RISK_LEVELS
    response_category: tuple[str, ...] = RESPONSE_CATEGORIES
    query_risk: tuple[str, ...] = RISK_LEVELS
    query_category: tuple[str, ...] = QUERY_CATEGORIES

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LabelMaps:
        return cls(
            response_risk=_index_map(config.get("response_risk_level_map"), RISK_LEVELS,
                                     "response_risk_level_map"),
            response_category=_index_map(config.get("response_category_map"), RESPONSE_CATEGORIES,
                                         "response_category_map"),
            query_risk=_index_map(config.get("query_risk_level_map"), RISK_LEVELS, "query_risk_level_map"),
            query_category=_index_map(config.get("query_category_map"), QUERY_CATEGORIES,
                                      "query_category_map"),
        )

    def to_config(self) -> dict[str, dict[str, str]]:
        def as_map(values: tuple[str, ...]) -> dict[str, str]:
            return {str(i): v for i, v in enumerate(values)}

        return {
            "response_risk_level_map": as_map(self.response_risk),
            "response_category_map": as_map(self.response_category),
            "query_risk_level_map": as_map(self.query_risk),
            "query_category_map": as_map(self.query_category),
        }


def read_label_maps(model_dir: Path) -> LabelMaps:
    """The label maps of a checkpoint or ONNX export directory: its config.json's, else the defaults."""
    config_file = model_dir / "config.json"
    return LabelMaps.from_config(read_json_object(config_file) if config_file.is_file() else {})
