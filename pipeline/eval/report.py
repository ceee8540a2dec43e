"""From sample runs to the eval report: metrics (JSON), a table, a plot, and a threshold sweep."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.decision import ThresholdRule
from pipeline.eval.metrics import (
    BINS,
    DETECTION_MODES,
    Outcome,
    classification,
    confusion,
    detection_position,
    timing,
    timing_bin,
)
from pipeline.eval.runs import SampleRun
from pipeline.eval.sweep import SweptThreshold, rule_outcome, swept_rule
from pipeline.tokens.text import TextTokenizer
from schemas.policy import PolicyMode


def whole_string_agrees(text: TextTokenizer, context_ids: Sequence[int]) -> bool:
    """Whether tokenizing the rendered conversation as one string (as the report's script does) gives
    the stream's tokens: then the dataset's token positions mean the same tokens here."""
    rendered = text.decode(context_ids)
    return list(text.template.encode(rendered, add_special_tokens=False).ids) == list(context_ids)


def metrics(runs: Sequence[SampleRun], outcomes: Sequence[Outcome] | None = None) -> dict[str, Any]:
    """Classification under both policies, the confusion matrix and detection timing in every mode."""
    outcomes = outcomes if outcomes is not None else [r.outcome for r in runs]
    judged = [(r, o) for r, o in zip(runs, outcomes, strict=True) if r.judged]
    out: dict[str, Any] = {"samples": len(runs), "not_judged": len(runs) - len(judged)}
    gold = [r.sample.label for r, _ in judged]
    predicted = [o.risk for _, o in judged]
    out["classification"] = {}
    for name, role in (("all", None), ("prompt", "user"), ("response", "assistant")):
        idx = [i for i, (r, _) in enumerate(judged) if role is None or r.sample.role == role]
        g, p = [gold[i] for i in idx], [predicted[i] for i in idx]
        out["classification"][name] = {"samples": len(idx), **{
            policy: classification(g, p, policy).as_dict() for policy in ("strict", "loose")}}
    out["confusion"] = {"order": ["safe", "controversial", "unsafe"], "rows_gold_columns_predicted":
                        confusion(gold, predicted)}
    timed = [(r, o) for r, o in judged if r.sample.timed and r.sample.label == "unsafe"]
    out["timing"] = {}
    for mode in DETECTION_MODES:
        bins = [timing_bin(detection_position(o, mode), int(r.sample.unsafe_start or 0), int(r.sample.unsafe_end or 0))
                for r, o in timed]
        out["timing"][mode] = timing(bins).as_dict()
    return out


def sweep(runs: Sequence[SampleRun], base: ThresholdRule, which: SweptThreshold, grid: Sequence[float],
          policy: PolicyMode) -> list[dict[str, Any]]:
    """Metrics at each threshold value: response samples relabelled from their kept probabilities."""
    points = []
    for value in grid:
        rule = swept_rule(base, which, value)
        outcomes = [
            rule_outcome(r.argmax, r.scores, rule, r.outcome.positions)
            if r.argmax is not None and r.scores is not None else r.outcome
            for r in runs
        ]
        m = metrics(runs, outcomes)
        points.append({"threshold": value, "rule": {"unsafe_threshold": rule.unsafe_threshold,
                                                      "risky_threshold": rule.risky_threshold,
                                                      "debounce_tokens": rule.debounce_tokens},
                       "classification": m["classification"]["all"][policy], "timing": m["timing"][policy]})
    return points


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{100 * value:.1f}%"
    return str(value)


def print_tables(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    m = report["metrics"]
    table = Table(title=f"classification ({report['model']}, {report['engine']})")
    for column in ("set", "policy", "samples", "precision", "recall", "unsafe-F1", "tp/fp/fn/tn"):
        table.add_column(column, justify="right" if column not in ("set", "policy") else "left")
    for name, block in m["classification"].items():
        if not block["samples"]:
            continue
        for policy in ("strict", "loose"):
            c = block[policy]
            table.add_row(name, policy, str(block["samples"]), _fmt(c["precision"]), _fmt(c["recall"]),
                          _fmt(c["f1"]), f"{c['tp']}/{c['fp']}/{c['fn']}/{c['tn']}")
    console.print(table)
    if any(t["total"] for t in m["timing"].values()):
        timing_table = Table(title="detection timing (unsafe samples with loc indices)")
        timing_table.add_column("bin")
        modes = list(m["timing"])
        for mode in modes:
            timing_table.add_column(mode, justify="right")
        for b in BINS:
            timing_table.add_row(b, *(str(m["timing"][mode]["bins"][b]) for mode in modes))
        timing_table.add_row("exact hit", *(_fmt(m["timing"][mode]["exact_hit"]) for mode in modes))
        timing_table.add_row("hit within 128", *(_fmt(m["timing"][mode]["within_128"]) for mode in modes))
        console.print(timing_table)
        console.print(f"index convention: {report['index_check']['whole_string_differs']} of "
                      f"{report['index_check']['timed']} timed samples tokenize differently as one string "
                      "(their positions may be off by a token; docs/eval.md)")
    if report.get("latency"):
        for kind, lat in report["latency"].items():
            console.print(f"verdict latency_ms ({kind}, worker-measured): p50 {lat['p50']} p95 {lat['p95']} "
                          f"p99 {lat['p99']} max {lat['max']}")
    if report.get("sweep"):
        sweep_table = Table(title=f"sweep of {report['sweep']['threshold']}_threshold ({report['policy']})")
        for column in ("threshold", "precision", "recall", "unsafe-F1", "exact hit", "hit within 128"):
            sweep_table.add_column(column, justify="right")
        for point in report["sweep"]["points"]:
            c, t = point["classification"], point["timing"]
            sweep_table.add_row(f"{point['threshold']:.2f}", _fmt(c["precision"]), _fmt(c["recall"]), _fmt(c["f1"]),
                                _fmt(t["exact_hit"]), _fmt(t["within_128"]))
        console.print(sweep_table)


def plot(report: dict[str, Any], path: Path) -> None:
    """Confusion matrix, detection-timing histogram and (with a sweep) metrics against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report["metrics"]
    panels = 3 if report.get("sweep") else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.4))
    left, middle = axes[0], axes[1]
    matrix = m["confusion"]["rows_gold_columns_predicted"]
    names = m["confusion"]["order"]
    left.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            left.text(j, i, str(count), ha="center", va="center")
    left.set_xticks(range(3), names)
    left.set_yticks(range(3), names)
    left.set_xlabel("predicted (final verdict)")
    left.set_ylabel("gold label")
    left.set_title("confusion matrix")
    width = 0.27
    for k, mode in enumerate(DETECTION_MODES):
        counts = [m["timing"][mode]["bins"][b] for b in BINS]
        middle.bar([i + (k - 1) * width for i in range(len(BINS))], counts, width, label=mode)
    middle.set_xticks(range(len(BINS)), BINS, rotation=35)
    middle.set_ylabel("samples")
    middle.set_title("detection timing (tokens after the unsafe sentence)")
    middle.legend()
    if report.get("sweep"):
        right = axes[2]
        points = report["sweep"]["points"]
        xs = [p["threshold"] for p in points]
        for key, label in (("precision", "precision"), ("recall", "recall"), ("f1", "unsafe-F1")):
            right.plot(xs, [p["classification"][key] if p["classification"][key] is not None else float("nan")
                            for p in points], "o-", label=label)
        for key, label in (("exact_hit", "exact hit"), ("within_128", "hit within 128")):
            right.plot(xs, [p["timing"][key] if p["timing"][key] is not None else float("nan") for p in points],
                       "s--", label=label)
        right.set_xlabel(f"{report['sweep']['threshold']}_threshold")
        right.set_ylim(-0.02, 1.02)
        right.set_title(f"sweep ({report['policy']} policy)")
        right.legend(fontsize=8)
    fig.suptitle(f"{report['model']} - {report['data']} - {report['engine']} - {report['policy']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
