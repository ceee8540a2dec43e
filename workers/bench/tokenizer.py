"""``guardstream bench tokenizer``: incremental tokenization cost per character, by input class.

For each input class (digits, whitespace, punctuation, CJK, emoji ZWJ chains, combining marks,
unassigned code points, mixed English and code) one text of ``--chars`` characters is streamed
through :class:`pipeline.tokens.incremental.IncrementalTokenizer` in 1- and 64-character deltas
and in deltas of one token (as a model streams), and, as the baseline measured in the same run,
encoded whole with the same Qwen3 tokenizer. Each row says whether the streamed ids equal the
whole text's (runs over the held-text cap are cut, see docs/token-stream.md) and the most text
held at once. Times are CPU time of this process (on a
shared machine wall time mostly measures the neighbours; it is recorded too). Prints a table,
writes ``tokenizer.json``, ``tokenizer.md`` and ``tokenizer.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from workers.bench.results import figure, save_figure

DEFAULT_OUT = Path("bench-results/tokenizer")
# Deltas of 1 and 64 characters, and of one Qwen3 token each (cut where the whole text's tokens start,
# as a model streams its reply).
TOKEN = "token"
DELTA_SIZES: tuple[int | str, ...] = (1, 64, TOKEN)

# One repeating unit per input class: the text is that unit repeated to the requested length.
CLASS_UNITS: dict[str, str] = {
    "digits": "3141592653589793238462643383279502884197169399375105820974944592",
    "whitespace": " ",
    "punctuation": "=",
    "cjk": "学习编程你好世界",
    "emoji ZWJ": "👨\u200d👩\u200d👧\u200d👦",
    "combining marks": "\u0301\u0316",
    "unassigned": "\U000e0fff",
    "mixed English/code": (
        "The quick brown fox, 42 times; it's fine.\n"
        "def area(r: float) -> float:\n    return 3.14159 * r ** 2  # circle\n"
    ),
}


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "tokenizer", help="incremental tokenizer: µs per character by input class, against one whole-text encode",
    )
    parser.add_argument("--chars", type=int, default=0, help="Characters per input class (default 20000, quick 1000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Result directory (default {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="Short texts: a smoke run")
    parser.set_defaults(func=run)


def class_text(name: str, size: int) -> str:
    unit = CLASS_UNITS[name]
    return (unit * (size // len(unit) + 1))[:size]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.errors import UserError
    from pipeline.tokens.files import load_qwen3_tokenizer
    from pipeline.tokens.incremental import MAX_HELD_CHARS, IncrementalTokenizer
    from pipeline.tokens.text import TextTokenizer

    console = Console(stderr=True)
    size = args.chars or (1000 if args.quick else 20_000)
    if size < 1:
        raise UserError(f"--chars must be at least 1, got {size}")
    text_tokenizer = TextTokenizer(load_qwen3_tokenizer())
    incremental = IncrementalTokenizer(text_tokenizer)
    started, load_before = time.monotonic(), os.getloadavg()
    _measure_stream(incremental, list("warm-up: 你好 👍🏽 e\u0301 \U000e0fff 123"))   # one-time Unicode tables
    rows = []
    for name in CLASS_UNITS:
        console.print(f"[dim]bench tokenizer[/]: {name}, {size} characters")
        text = class_text(name, size)
        whole_s, whole_ids = _measure_whole(text_tokenizer, text)
        for step in DELTA_SIZES:
            parts = _deltas(text_tokenizer, text, step)
            elapsed, wall, ids, held = _measure_stream(incremental, parts)
            rows.append({
                "input": name,
                "delta_chars": step,
                "deltas": len(parts),
                "us_per_char": round(elapsed / size * 1e6, 3),
                "whole_us_per_char": round(whole_s / size * 1e6, 3),
                "ratio_to_whole": round(elapsed / whole_s, 1) if whole_s else None,
                "us_per_delta": round(elapsed / len(parts) * 1e6, 2),
                "wall_us_per_char": round(wall / size * 1e6, 3),
                "tokens": len(ids),
                "exact": ids == whole_ids,
                "max_held_chars": held,
            })
    report = {
        "command": "guardstream bench tokenizer" + (" --quick" if args.quick else "")
                   + (f" --chars {args.chars}" if args.chars else ""),
        "machine": f"{platform.system()} {platform.machine()}, CPU, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "chars_per_input": size,
        "max_held_chars": MAX_HELD_CHARS,
        "seconds": round(time.monotonic() - started, 1),
        # Other processes on the machine inflate timings; the 1-minute load average says how much.
        "load_average": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tokenizer.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (args.out / "tokenizer.md").write_text(render_markdown(report))
    _plot(report, args.out / "tokenizer.png")
    Console().print(render_markdown(report), soft_wrap=True)
    console.print(f"[dim]bench tokenizer[/]: wrote tokenizer.json, tokenizer.md and tokenizer.png into {args.out}")
    return 0


def _measure_whole(text_tokenizer: Any, text: str) -> tuple[float, list[int]]:
    """Best of three whole-text encodes (CPU seconds) and the ids."""
    best, ids = float("inf"), []
    for _ in range(3):
        start = time.process_time()
        ids = text_tokenizer.encode_text(text)
        best = min(best, time.process_time() - start)
    return best, ids


def _deltas(text_tokenizer: Any, text: str, step: int | str) -> list[str]:
    if isinstance(step, int):
        return [text[i:i + step] for i in range(0, len(text), step)]
    starts = sorted({start for start, _ in text_tokenizer.encode_text_spans(text).spans if start > 0})
    bounds = [0, *starts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _measure_stream(incremental: Any, parts: list[str]) -> tuple[float, float, list[int], int]:
    """(CPU seconds, wall seconds, ids, most characters held) streaming ``parts`` one delta each."""
    from pipeline.tokens.incremental import IncrementalState

    state = IncrementalState()
    ids: list[int] = []
    held = 0
    start, wall = time.process_time(), time.perf_counter()
    for part in parts:
        ids += incremental.feed(state, part).ids
        held = max(held, len(state.pending))
    ids += incremental.finish(state).ids
    return time.process_time() - start, time.perf_counter() - wall, ids, held


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"`{report['command']}` on {report['machine']}, {report['date']}; {report['chars_per_input']} characters "
        f"per input, held-text cap {report['max_held_chars']}, CPU time of the process, load average "
        f"{report['load_average']['before']} -> {report['load_average']['after']}",
        "",
        "| input | delta | µs/char streamed | µs/char whole encode | ratio | µs/delta | wall µs/char | exact "
        "| max held |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['input']} | {row['delta_chars']} | {row['us_per_char']} | {row['whole_us_per_char']} | "
            f"{row['ratio_to_whole']} | {row['us_per_delta']} | {row['wall_us_per_char']} | "
            f"{'yes' if row['exact'] else 'no (cap)'} | "
            f"{row['max_held_chars']} |"
        )
    return "\n".join(lines) + "\n"


def _label(step: int | str) -> str:
    return f"{step}-char deltas" if isinstance(step, int) else "1-token deltas"


def _plot(report: dict[str, Any], path: Path) -> None:
    inputs = list(dict.fromkeys(r["input"] for r in report["rows"]))
    series: dict[str, list[float]] = {"whole-text encode": []}
    for step in DELTA_SIZES:
        series[_label(step)] = []
    for name in inputs:
        rows = {r["delta_chars"]: r for r in report["rows"] if r["input"] == name}
        series["whole-text encode"].append(rows[DELTA_SIZES[0]]["whole_us_per_char"])
        for step in DELTA_SIZES:
            series[_label(step)].append(rows[step]["us_per_char"])
    fig, ax = figure(1, (11, 4.5))
    width = 0.8 / len(series)
    for offset, (label, values) in enumerate(series.items()):
        ax.bar([i + offset * width for i in range(len(inputs))], values, width, label=label)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(inputs))], inputs, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("CPU µs per character")
    ax.set_title(f"Incremental tokenizer, {report['chars_per_input']} characters per input")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(series), frameon=False)
    save_figure(fig, path, dpi=110)
