"""Relabelling kept per-token probabilities under many thresholds at once (``guardstream eval --sweep``).

:func:`rule_outcome` is :class:`pipeline.decision.ThresholdRule` + the debounce written with numpy,
so that a sweep over thousands of samples and dozens of thresholds takes seconds; a test holds it
equal to the online debouncer token for token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec
import numpy as np

from pipeline.decision import SCORE_DIGITS, ThresholdRule
from pipeline.eval.metrics import Outcome

SAFE, UNSAFE, CONTROVERSIAL = 0, 1, 2
SweptThreshold = Literal["unsafe", "risky"]


def relabel(argmax: np.ndarray, scores: np.ndarray, rule: ThresholdRule) -> np.ndarray:
    """Per-token risk codes under ``rule`` (argmax codes when it sets no threshold)."""
    if not rule.relabels:
        return argmax
    unsafe = argmax == UNSAFE if rule.unsafe_threshold is None else scores[:, UNSAFE] >= rule.unsafe_threshold
    if rule.risky_threshold is None:
        risky = argmax != SAFE
    else:
        risky = np.round(scores[:, UNSAFE] + scores[:, CONTROVERSIAL], SCORE_DIGITS) >= rule.risky_threshold
    return np.where(unsafe, UNSAFE, np.where(risky, CONTROVERSIAL, SAFE)).astype(np.int8)


def first_run_end(codes: np.ndarray, level: int, length: int) -> int | None:
    """Index of the last token of the first run of ``length`` consecutive ``level`` tokens."""
    hits = (codes == level).astype(np.int32)
    if len(hits) < length:
        return None
    windows = np.convolve(hits, np.ones(length, dtype=np.int32), mode="valid")
    found = np.flatnonzero(windows == length)
    return int(found[0]) + length - 1 if len(found) else None


def rule_outcome(argmax: np.ndarray, scores: np.ndarray, rule: ThresholdRule, positions: Sequence[int]) -> Outcome:
    codes = relabel(argmax, scores, rule)
    unsafe = first_run_end(codes, UNSAFE, rule.debounce_tokens)
    controversial = first_run_end(codes, CONTROVERSIAL, rule.debounce_tokens)
    if unsafe is not None and controversial is not None and controversial > unsafe:
        controversial = None   # the stream flags nothing after an Unsafe run
    risk = "unsafe" if unsafe is not None else "controversial" if controversial is not None else "safe"
    return Outcome(risk, unsafe, controversial, tuple(positions))  # type: ignore[arg-type]


def swept_rule(base: ThresholdRule, which: SweptThreshold, value: float) -> ThresholdRule:
    return msgspec.structs.replace(base, **{f"{which}_threshold": value})


def default_grid(steps: int = 19) -> list[float]:
    """0.05, 0.10, ..., 0.95."""
    return [round((i + 1) / (steps + 1), 4) for i in range(steps)]
