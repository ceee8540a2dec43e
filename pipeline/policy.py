"""Per-tenant policy: turns a risk level (and category) into allow/block.

strict blocks controversial and unsafe; loose blocks only unsafe. An optional category
allow-list lets a tenant accept risks in named categories (e.g. a security-research tenant
allowing "Non-violent Illegal Acts").

Thresholds (optional, docs/eval.md "Per-tenant thresholds"): ``unsafe_threshold``,
``risky_threshold`` and ``debounce_tokens`` replace the official per-token argmax labels and pair
debounce for a tenant's responses (:class:`pipeline.decision.ThresholdRule`); prompts keep the
argmax rule. Unset, the official rule applies unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.decision import OFFICIAL_RULE, ThresholdRule
from pipeline.errors import UserError
from pipeline.mapping_files import parse_mapping_file
from schemas.policy import PolicyMode


@dataclass(frozen=True)
class TenantPolicy:
    mode: PolicyMode = "strict"
    allowed_categories: frozenset[str] = field(default_factory=frozenset)
    rule: ThresholdRule = OFFICIAL_RULE   # how a response's tokens are labelled and debounced

    def action(self, risk: str, categories: str | Iterable[str] | None = None) -> Literal["allow", "block"]:
        if risk == "safe" or (risk == "controversial" and self.mode == "loose"):
            return "allow"
        cats = [categories] if isinstance(categories, str) else list(categories or [])
        if cats and self.allowed_categories and all(c in self.allowed_categories for c in cats):
            return "allow"
        return "block"


@dataclass(frozen=True)
class PolicyBook:
    default: TenantPolicy = TenantPolicy()
    tenants: Mapping[str, TenantPolicy] = field(default_factory=dict)

    def for_tenant(self, tenant: str | None) -> TenantPolicy:
        if tenant is None:
            return self.default
        return self.tenants.get(tenant, self.default)


POLICY_KEYS = ("mode", "allow_categories", "unsafe_threshold", "risky_threshold", "debounce_tokens")


def parse_rule(where: str, raw: Mapping[str, Any]) -> ThresholdRule:
    """The threshold keys of a policy mapping (absent: the official rule)."""
    values: dict[str, Any] = {}
    for key in ("unsafe_threshold", "risky_threshold"):
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise UserError(f"{where}: {key} must be a probability between 0 and 1, got {value!r}")
        values[key] = float(value)
    debounce = raw.get("debounce_tokens", 2)
    if isinstance(debounce, bool) or not isinstance(debounce, int) or not 1 <= debounce <= 1024:
        raise UserError(f"{where}: debounce_tokens must be a whole number of tokens from 1 to 1024, got {debounce!r}")
    values["debounce_tokens"] = debounce
    return ThresholdRule(**values)


def _parse_policy(where: str, raw: Any) -> TenantPolicy:
    if isinstance(raw, str):
        raw = {"mode": raw}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a policy is 'strict', 'loose' or a mapping with mode/allow_categories")
    unknown = sorted(str(k) for k in raw if k not in POLICY_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(POLICY_KEYS)}")
    mode = raw.get("mode", "strict")
    if mode not in ("strict", "loose"):
        raise UserError(f"{where}: mode {mode!r} must be 'strict' or 'loose'")
    allowed = raw.get("allow_categories", [])
    if not isinstance(allowed, list) or not all(isinstance(c, str) for c in allowed):
        raise UserError(f"{where}: allow_categories must be a list of category names")
    return TenantPolicy(mode=mode, allowed_categories=frozenset(allowed), rule=parse_rule(where, raw))


def load_policy_book(path: str | None, default_mode: str = "strict") -> PolicyBook:
    """Read a YAML or JSON policy file::

        default: strict
        tenants:
          acme: loose
          research: {mode: strict, allow_categories: ["Non-violent Illegal Acts"]}
          support: {mode: strict, unsafe_threshold: 0.6, risky_threshold: 0.8, debounce_tokens: 3}
    """
    default = _parse_policy("default policy", default_mode)
    if not path:
        return PolicyBook(default=default)
    file = Path(path)
    if not file.is_file():
        raise UserError(f"policy file {path} does not exist; pass --policy-file with a YAML or JSON file")
    try:
        data = parse_mapping_file(file)
    except Exception as exc:
        raise UserError(f"policy file {path} does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"policy file {path}: expected a mapping with 'default' and 'tenants'")
    if "default" in data:
        default = _parse_policy(f"{path}: default", data["default"])
    tenants_raw = data.get("tenants") or {}
    if not isinstance(tenants_raw, dict):
        raise UserError(f"{path}: 'tenants' must map tenant names to policies")
    tenants = {str(k): _parse_policy(f"{path}: tenant {k}", v) for k, v in tenants_raw.items()}
    return PolicyBook(default=default, tenants=tenants)
