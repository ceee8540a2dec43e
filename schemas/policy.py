"""The policy file's structure (YAML or JSON), for its JSON Schema (``schemas/v1/policy-book.schema.json``).

The reader is ``pipeline.policy.load_policy_book``, which gives line-level error messages; these
structs state the same rules for editors and CI checks of policy files. Thresholds: docs/eval.md,
"Per-tenant thresholds".
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

PolicyMode = Literal["strict", "loose"]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class TenantPolicySpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One tenant: how risk levels map to actions, and optionally how tokens are labelled."""

    mode: PolicyMode = "strict"
    allow_categories: list[str] = msgspec.field(default_factory=list)
    # A token is unsafe when P(unsafe) >= this (absent: argmax).
    unsafe_threshold: Probability | None = None
    # Otherwise controversial when P(unsafe) + P(controversial) >= this (absent: argmax).
    risky_threshold: Probability | None = None
    # Consecutive tokens of one level that decide a response (2: the official rule).
    debounce_tokens: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 2


class PolicyBookSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The whole file: a default policy and per-tenant ones ("strict", "loose" or a mapping)."""

    default: PolicyMode | TenantPolicySpec = "strict"
    tenants: dict[str, PolicyMode | TenantPolicySpec] = msgspec.field(default_factory=dict)
