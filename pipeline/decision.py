"""The Qwen3Guard decision rules (model facts §5): prompt argmax, response debounce, offline and online.

Prompt: argmax of the query risk head at the user's ``<|im_end|>``; ``token_index`` 0.

Response (official eval_stream.py rule) over the per-token argmax labels: Unsafe if two consecutive
tokens are Unsafe anywhere; else Controversial if two consecutive tokens are Controversial; else
Safe. Mixed Unsafe/Controversial pairs do not trigger. The deciding token is the second of the first
such pair; the category is that token's category.

Our definitions where the official rule says nothing:
- Safe response: ``token_index`` = its last scored token, ``scores`` = that token's softmax,
  ``category`` None.
- Empty response (no scored tokens): Safe, ``token_index`` None, ``scores`` empty.
- ``scores`` are softmax probabilities rounded to :data:`SCORE_DIGITS` decimals, so that float
  noise between engines and batchings does not change a verdict's content.

:class:`ResponseDebouncer` is the online form: fed one scored token at a time, it reports a flag at
the first debounced pair and an escalation when an Unsafe pair follows a Controversial flag; its
:meth:`ResponseDebouncer.decision` at the end equals :func:`decide_response` on the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import numpy as np

from pipeline.labels import LabelMaps, long_category, risk_name

Risk = Literal["safe", "controversial", "unsafe"]
SCORE_DIGITS = 4


@dataclass(frozen=True)
class Decision:
    risk: Risk
    category: str | None            # long name; None when safe
    token_index: int | None         # among the message's scored tokens
    scores: dict[str, float]        # softmax per risk level (lowercase names) at the deciding token
    token_labels: list[str] = field(default_factory=list)  # per scored token argmax risk


@dataclass(frozen=True)
class TokenJudgement:
    """One scored token: argmax risk (lowercase), argmax category (long name), risk softmax."""

    risk: Risk
    category: str
    scores: dict[str, float]


def softmax_scores(logits: np.ndarray, risk_labels: Sequence[str]) -> dict[str, float]:
    row = np.asarray(logits, dtype=np.float64)
    exp = np.exp(row - row.max())
    probs = exp / exp.sum()
    return {risk_name(label): round(float(p), SCORE_DIGITS) for label, p in zip(risk_labels, probs, strict=True)}


def _as_risk(label: str) -> Risk:
    name = risk_name(label)
    if name not in ("safe", "controversial", "unsafe"):
        raise ValueError(f"risk label {label!r} is not Safe, Unsafe or Controversial")
    return name  # type: ignore[return-value]


def judge_tokens(
    risk_logits: np.ndarray, category_logits: np.ndarray, risk_labels: Sequence[str], category_labels: Sequence[str],
) -> list[TokenJudgement]:
    """Per-row argmax risk and category plus the risk softmax."""
    risk_logits = np.asarray(risk_logits)
    category_logits = np.asarray(category_logits)
    if risk_logits.shape[0] != category_logits.shape[0]:
        raise ValueError(f"risk and category logits disagree on rows: {risk_logits.shape} vs {category_logits.shape}")
    risks = risk_logits.argmax(axis=-1) if len(risk_logits) else []
    categories = category_logits.argmax(axis=-1) if len(category_logits) else []
    return [
        TokenJudgement(
            _as_risk(risk_labels[int(r)]), long_category(category_labels[int(c)]),
            softmax_scores(risk_logits[i], risk_labels),
        )
        for i, (r, c) in enumerate(zip(risks, categories, strict=True))
    ]


def decide_prompt(query_risk_logits: np.ndarray, query_category_logits: np.ndarray, labels: LabelMaps) -> Decision:
    """The prompt verdict from the query heads at ``<|im_end|>`` (one row; more rows: the last is used)."""
    judged = judge_tokens(np.atleast_2d(query_risk_logits)[-1:], np.atleast_2d(query_category_logits)[-1:],
                          labels.query_risk, labels.query_category)[0]
    return Decision(
        risk=judged.risk, category=None if judged.risk == "safe" else judged.category,
        token_index=0, scores=judged.scores, token_labels=[judged.risk],
    )


class PairEvent(msgspec.Struct, frozen=True):
    """A debounced pair: the level it reached and its deciding (second) token."""

    risk: Risk
    category: str
    token_index: int
    scores: dict[str, float]


class ResponseDebouncer(msgspec.Struct):
    """Online debounce over a response's scored tokens; serializable (msgspec) for durable state."""

    count: int = 0
    previous: Risk | None = None
    first_unsafe: PairEvent | None = None
    first_controversial: PairEvent | None = None
    last_scores: dict[str, float] | None = None

    def push(self, judged: TokenJudgement) -> PairEvent | None:
        """Add the next scored token; return the flag it raises (first pair, or escalation), if any."""
        index = self.count
        self.count += 1
        self.last_scores = judged.scores
        paired = judged.risk != "safe" and judged.risk == self.previous
        self.previous = judged.risk
        if not paired or self.first_unsafe is not None:
            return None
        event = PairEvent(judged.risk, judged.category, index, judged.scores)
        if judged.risk == "unsafe":
            self.first_unsafe = event
            return event
        if self.first_controversial is None:
            self.first_controversial = event
            return event
        return None

    def decision(self, token_labels: Sequence[str] = ()) -> Decision:
        """The end-of-message verdict (equal to :func:`decide_response` on the same tokens)."""
        event = self.first_unsafe or self.first_controversial
        if event is not None:
            return Decision(event.risk, event.category, event.token_index, dict(event.scores), list(token_labels))
        if self.count == 0:
            return Decision("safe", None, None, {}, list(token_labels))
        return Decision("safe", None, self.count - 1, dict(self.last_scores or {}), list(token_labels))


def decide_response(risk_logits: np.ndarray, category_logits: np.ndarray, labels: LabelMaps) -> Decision:
    """The response verdict over all scored tokens of an assistant message (official debounce rule)."""
    judged = judge_tokens(risk_logits, category_logits, labels.response_risk, labels.response_category)
    debouncer = ResponseDebouncer()
    for token in judged:
        debouncer.push(token)
    return debouncer.decision([t.risk for t in judged])
