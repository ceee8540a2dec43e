"""``guardstream bench SUITE``: the benchmark suites, each with its baseline in the same run."""

from __future__ import annotations

import importlib
from typing import Any

SUITES = ("engine", "e2e", "gen", "tokenizer", "worker", "gpu", "gateway", "soak")


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks: table + JSON + plot, baseline measured in the same run")
    suites = p.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name in SUITES:
        # Each suite module registers its own parser (flags, defaults, func).
        importlib.import_module(f"workers.bench.{name}").register(suites)
