"""What every ``guardstream bench`` command shares: the stack check, the machine's CPU count, the
level list, and writing the results (JSON, an optional Markdown report, a plot) plus the table it prints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.errors import UserError


def require_stack(settings: Settings) -> None:
    """A clear error before any work when the benchmark's Kafka or Redis is not answering."""
    from pipeline.stack.probes import kafka_answers, redis_answers

    if not (kafka_answers(settings.kafka_config()) and redis_answers(settings.redis_url)):
        raise UserError("Kafka or Redis is not answering; start the local stack with 'guardstream up'")


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, where the platform has one)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_levels(raw: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """A ``--levels`` value: comma-separated integers (empty: ``default``)."""
    if not raw:
        return default
    try:
        return tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise UserError(f"levels must be comma-separated integers, got {raw!r}") from None


def figure(columns: int, size: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib figure with ``columns`` axes side by side, drawn off-screen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, columns, figsize=size)


def save_figure(fig: Any, path: Path, dpi: int = 120) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def write_results(out: Path, name: str, payload: dict[str, Any], plot: Callable[[Path], None], table: str, *,
                  report: str | None = None, also: tuple[Path, ...] = ()) -> None:
    """``out/NAME.json``, ``out/NAME.png`` (drawn by ``plot``) and, given a ``report``, ``out/NAME.md``;
    then the table and the paths written (and ``also``: other files the run left there)."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.json"]
    written[0].write_text(json.dumps(payload, indent=2) + "\n")
    if report is not None:
        written.append(out / f"{name}.md")
        written[-1].write_text(report)
    written.append(out / f"{name}.png")
    plot(written[-1])
    print(table)
    paths = [str(p) for p in (*written, *also)]
    print(f"wrote {', '.join(paths[:-1])} and {paths[-1]}")
