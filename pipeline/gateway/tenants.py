"""Which tenant a request belongs to: an API-key map, a header, or the gateway's one tenant.

API keys are compared, never logged or forwarded: with a key map the upstream gets the gateway's
own upstream key instead of the client's.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError
from pipeline.mapping_files import file_format, parse_mapping_file
from schemas.messages import MAX_TENANT_CHARS


class Unauthorized(Exception):
    """No API key, or one the key map does not know."""


class BadTenant(Exception):
    """The tenant header holds something that cannot be a tenant name."""


def load_key_map(path: str) -> dict[str, str]:
    """A YAML or JSON mapping ``api key -> tenant``."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"API key file {path} does not exist; pass --gateway-api-keys with a YAML or JSON file "
                        "mapping each key to its tenant")
    try:
        data = parse_mapping_file(file)
    except Exception:
        # The parser's message may quote the file, i.e. keys: never repeat it.
        raise UserError(f"API key file {path} does not parse as {file_format(file)}") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"API key file {path}: expected a non-empty mapping of API key to tenant name")
    keys: dict[str, str] = {}
    for n, (key, tenant) in enumerate(data.items()):
        if not isinstance(key, str) or not key or not isinstance(tenant, str) or not valid_tenant(tenant):
            raise UserError(f"API key file {path}: entry {n + 1} must map a non-empty key to a tenant name "
                            f"(1-{MAX_TENANT_CHARS} printable characters)")
        keys[key] = tenant
    return keys


def valid_tenant(name: str) -> bool:
    return 0 < len(name) <= MAX_TENANT_CHARS and name.isprintable()


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class TenantResolver:
    default: str | None = None
    header: str = ""                                  # trusted tenant header ("" off)
    keys: Mapping[str, str] | None = None             # API key -> tenant (None: no key check)
    known: frozenset[str] = field(default_factory=frozenset)   # tenants named in metrics labels

    def resolve(self, headers: Mapping[str, str]) -> str | None:
        if self.keys is not None:
            token = bearer(headers)
            if token is not None:
                for key, tenant in self.keys.items():
                    if hmac.compare_digest(key.encode(), token.encode()):
                        return tenant
            raise Unauthorized("a valid API key is required (Authorization: Bearer KEY)")
        if self.header:
            value = headers.get(self.header)
            if value is not None:
                if not valid_tenant(value):
                    raise BadTenant(f"header {self.header} must be a tenant name of 1-{MAX_TENANT_CHARS} "
                                    "printable characters")
                return value
        return self.default

    def label(self, tenant: str | None) -> str:
        """A bounded metrics label: tenants of the key map or the policy book, else ``other``."""
        if tenant is None:
            return ""
        return tenant if tenant in self.known else "other"
