"""``guardstream config``: show every setting, its env var, flag and current value."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.config import cli_flag, env_var, load_settings, settings_fields, settings_markdown_table


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="show settings (env vars, flags, effective values)")
    p.add_argument("--markdown", action="store_true", help="print the README's configuration table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_markdown_table())
        return 0
    settings = load_settings()
    for f in settings_fields():
        value = getattr(settings, f.name)
        if "password" in f.name and value:
            value = "***"
        print(f"{env_var(f.name):40} {cli_flag(f.name):36} {value!r}")
    return 0
