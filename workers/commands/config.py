"""``guardstream config``: show every setting, its env var, flag and current value."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from pipeline.config import cli_flag, env_var, load_settings, settings_fields, settings_markdown_table
from pipeline.errors import UserError

TABLE_MARKERS = re.compile(r"(<!-- settings-table:start -->\n).*?(<!-- settings-table:end -->)", re.S)


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="show settings (env vars, flags, effective values)")
    p.add_argument("--markdown", action="store_true", help="print the README's configuration table")
    p.add_argument("--update-readme", metavar="README", help="rewrite the table between the README's markers")
    p.set_defaults(func=run)


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
    settings = load_settings()
    for f in settings_fields():
        value = getattr(settings, f.name)
        if "password" in f.name and value:
            value = "***"
        print(f"{env_var(f.name):40} {cli_flag(f.name):36} {value!r}")
    return 0
