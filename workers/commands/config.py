"""``guardstream config``: show every setting, its env var, flag and current value."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from pipeline.config import (
    add_settings_arguments,
    cli_flag,
    env_var,
    settings_fields,
    settings_from_args,
    settings_markdown_table,
)
from pipeline.errors import UserError

TABLE_MARKERS = re.compile(r"(<!-- settings-table:start -->\n).*?(<!-- settings-table:end -->)", re.S)
MASK = "***"
# Words that make a setting (or a kafka_extra key) a secret whose value is never printed.
SECRET_WORDS = ("password", "secret", "token", "credential", "api_key")
URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)

EPILOG = """\
Shows each setting's environment variable, CLI flag and effective value (flags given here,
then GUARD_* environment variables, then defaults), so you can check what a worker started
with the same flags and environment would use. Secrets are masked: passwords, and the
password inside a URL such as GUARD_REDIS_URL=redis://:PASSWORD@host:6379/0.

examples:
  guardstream config
  guardstream config --redis-url redis://:s3cret@redis:6379/0 --kafka-bootstrap kafka:9092
  guardstream config --markdown
"""


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="show settings (env vars, flags, effective values)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--markdown", action="store_true", help="print the README's configuration table")
    p.add_argument("--update-readme", metavar="README", help="rewrite the table between the README's markers")
    add_settings_arguments(p, [f.name for f in settings_fields()])
    p.set_defaults(func=run)


def is_secret(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_WORDS)


def masked_url(text: str) -> str:
    """scheme://user:PASSWORD@host/... with the password (which may hold '@' or '/') replaced."""
    scheme = URL_SCHEME.match(text)
    if not scheme:
        return text
    rest = text[scheme.end():]
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    user = userinfo.split(":", 1)[0]
    return f"{scheme.group(0)}{user}:{MASK}@{host}"


def masked(name: str, value: Any) -> Any:
    """``value`` as safe to print: secrets replaced by ***, also inside URLs and key=value lists."""
    if not isinstance(value, str) or not value:
        return value
    if is_secret(name):
        return MASK
    text = masked_url(value)
    if name == "kafka_extra":
        items = []
        for item in text.split(","):
            key, sep, _ = item.partition("=")
            items.append(f"{key}={MASK}" if sep and is_secret(key) else item)
        text = ",".join(items)
    return text


def update_readme(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if not TABLE_MARKERS.search(text):
        raise UserError(f"{path} has no <!-- settings-table:start/end --> markers to fill")
    table = settings_markdown_table()
    path.write_text(TABLE_MARKERS.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text), encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    if args.update_readme:
        update_readme(Path(args.update_readme))
        print(f"updated {args.update_readme}")
        return 0
    if args.markdown:
        print(settings_markdown_table())
        return 0
    settings = settings_from_args(args)
    for f in settings_fields():
        value = masked(f.name, getattr(settings, f.name))
        print(f"{env_var(f.name):40} {cli_flag(f.name):36} {value!r}")
    return 0
