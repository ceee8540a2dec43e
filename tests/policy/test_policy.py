"""Policy files: strict/loose per tenant, category allow-lists, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.policy import TenantPolicy, load_policy_book


def test_strict_blocks_controversial_and_unsafe_loose_only_unsafe() -> None:
    strict, loose = TenantPolicy("strict"), TenantPolicy("loose")
    assert [strict.action(r, "Violent") for r in ("safe", "controversial", "unsafe")] == ["allow", "block", "block"]
    assert [loose.action(r, "Violent") for r in ("safe", "controversial", "unsafe")] == ["allow", "allow", "block"]


def test_allow_list_allows_only_when_every_category_is_listed() -> None:
    policy = TenantPolicy("strict", frozenset({"Non-violent Illegal Acts"}))
    assert policy.action("unsafe", "Non-violent Illegal Acts") == "allow"
    assert policy.action("unsafe", ["Non-violent Illegal Acts", "Violent"]) == "block"
    assert policy.action("unsafe", None) == "block"


def test_yaml_policy_file_sets_default_and_tenants(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "default: loose\n"
        "tenants:\n"
        "  acme: strict\n"
        "  research: {mode: strict, allow_categories: [\"Non-violent Illegal Acts\"]}\n",
        encoding="utf-8",
    )
    book = load_policy_book(str(path))
    assert book.for_tenant(None).mode == "loose"
    assert book.for_tenant("unknown").mode == "loose"
    assert book.for_tenant("acme").action("controversial", "Violent") == "block"
    assert book.for_tenant("research").action("unsafe", "Non-violent Illegal Acts") == "allow"


def test_json_policy_file_is_read_too(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{"tenants": {"acme": {"mode": "loose"}}}', encoding="utf-8")
    book = load_policy_book(str(path), default_mode="strict")
    assert book.for_tenant("acme").mode == "loose"
    assert book.for_tenant("other").mode == "strict"


def test_no_policy_file_means_the_default_mode_for_everyone() -> None:
    assert load_policy_book(None, "loose").for_tenant("anyone").mode == "loose"


@pytest.mark.parametrize(("content", "problem"), [
    ("tenants: {acme: lenient}", "mode 'lenient'"),
    ("tenants: [acme]", "'tenants' must map"),
    ("tenants: {acme: {mode: strict, allow_categories: Violent}}", "allow_categories must be a list"),
    ("- just a list", "expected a mapping"),
    ("tenants: {acme: [", "does not parse"),
])
def test_bad_policy_files_say_what_is_wrong(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=problem.replace("[", r"\[")):
        load_policy_book(str(path))


def test_a_missing_policy_file_names_the_flag() -> None:
    with pytest.raises(UserError, match="--policy-file"):
        load_policy_book("/nonexistent/policy.yaml")
