"""The policy-book JSON Schema and the policy file reader accept and refuse the same files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from pipeline.errors import UserError
from pipeline.policy import load_policy_book
from schemas.generate import SCHEMA_DIR

SCHEMA = json.loads((Path(SCHEMA_DIR) / "policy-book.schema.json").read_text(encoding="utf-8"))

GOOD: list[dict[str, Any]] = [
    {},
    {"default": "loose"},
    {"default": {"mode": "strict", "risky_threshold": 0.8}},
    {"tenants": {"a": "strict", "b": {"mode": "loose", "allow_categories": ["PII"]},
                 "c": {"unsafe_threshold": 0.6, "risky_threshold": 0.8, "debounce_tokens": 3},
                 "d": {"unsafe_threshold": 0, "debounce_tokens": 1}}},
]
BAD: list[dict[str, Any]] = [
    {"default": "lenient"},
    {"tenants": {"a": {"unsafe_threshold": 1.5}}},
    {"tenants": {"a": {"risky_threshold": -0.1}}},
    {"tenants": {"a": {"debounce_tokens": 0}}},
    {"tenants": {"a": {"debounce_tokens": 2000}}},
    {"tenants": {"a": {"unsafe_treshold": 0.5}}},
    {"tenants": {"a": {"mode": "strict", "allow_categories": "PII"}}},
    {"tenants": {"a": 3}},
]


def _reader_accepts(tmp_path: Path, body: dict[str, Any]) -> bool:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(body), encoding="utf-8")
    try:
        load_policy_book(str(path))
    except UserError:
        return False
    return True


@pytest.mark.parametrize("body", GOOD)
def test_good_policy_files_pass_both(tmp_path: Path, body: dict[str, Any]) -> None:
    assert not list(Draft202012Validator(SCHEMA).iter_errors(body))
    assert _reader_accepts(tmp_path, body)


@pytest.mark.parametrize("body", BAD)
def test_bad_policy_files_fail_both(tmp_path: Path, body: dict[str, Any]) -> None:
    assert list(Draft202012Validator(SCHEMA).iter_errors(body))
    assert not _reader_accepts(tmp_path, body)
