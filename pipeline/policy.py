"""Per-tenant policy: turns a risk level (and category) into allow/block.

strict blocks controversial and unsafe; loose blocks only unsafe. An optional category
allow-list lets a tenant accept risks in named categories (e.g. a security-research tenant
allowing "Non-violent Illegal Acts").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import UserError

Mode = Literal["strict", "loose"]


@dataclass(frozen=True)
class TenantPolicy:
    mode: Mode = "strict"
    allowed_categories: frozenset[str] = field(default_factory=frozenset)

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


def _parse_policy(where: str, raw: Any) -> TenantPolicy:
    if isinstance(raw, str):
        raw = {"mode": raw}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a policy is 'strict', 'loose' or a mapping with mode/allow_categories")
    mode = raw.get("mode", "strict")
    if mode not in ("strict", "loose"):
        raise UserError(f"{where}: mode {mode!r} must be 'strict' or 'loose'")
    allowed = raw.get("allow_categories", [])
    if not isinstance(allowed, list) or not all(isinstance(c, str) for c in allowed):
        raise UserError(f"{where}: allow_categories must be a list of category names")
    return TenantPolicy(mode=mode, allowed_categories=frozenset(allowed))


def load_policy_book(path: str | None, default_mode: str = "strict") -> PolicyBook:
    """Read a YAML or JSON policy file::

        default: strict
        tenants:
          acme: loose
          research: {mode: strict, allow_categories: ["Non-violent Illegal Acts"]}
    """
    default = _parse_policy("default policy", default_mode)
    if not path:
        return PolicyBook(default=default)
    file = Path(path)
    if not file.is_file():
        raise UserError(f"policy file {path} does not exist; pass --policy-file with a YAML or JSON file")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
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
